#!/usr/bin/env bash
# GPU runs on the device machine (H100/H200 image: torch 2.11, transformers 5.17, no textual).
# Usage, from the repo root there:  benchmarks/gpu_session.sh PART   (results in $OUT)
# Needs, carried: .whl (transformers 5.24 as CI uses, textual, plotext, gguf, ...) and
# .devcache (the embedded tokenizer only, which synthetic models borrow for their text).
set -uo pipefail
OUT=${OUT:-/tmp/llmtop-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site LLMTOP_CACHE=$PWD/.devcache PYTHONUNBUFFERED=1
# run outside the checkout: its llmtop/ folder would shadow the installed package
REPO=$PWD; rm -rf /tmp/work; mkdir -p /tmp/work; cp -r tests benchmarks /tmp/work/; cd /tmp/work
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
run7b() { python3 -m llmtop run --headless --model synthetic:llama-2-7b --device cuda --max-new-tokens 128 --ignore-eos "$@"; }
# sweep DIR SECONDS BENCH-ARGS...: llmtop bench at prompt 2048, one warm-up and one measured run
# per point, the log and the engine's log in DIR; if bench itself dies (SIGSEGV seen on 4 x H200
# when a TP size changed), its Python stacks are in DIR/bench.log and --resume finishes the sweep
sweep() {
  local dir=$1 secs=$2; shift 2; mkdir -p "$dir"; local end=$((SECONDS + secs)) rc=0 try
  for try in 1 2 3; do
    local left=$((end - SECONDS)); [ $left -gt 20 ] || break
    if [ $try = 1 ]; then
      PYTHONFAULTHANDLER=1 timeout --signal=INT $left python3 -m llmtop bench --device cuda --prompt-len 2048 \
        --repeat 1 --warmup 1 --warmup-tokens 8 --no-plots --out "$dir" "$@" >> "$dir/bench.log" 2>&1
    else
      PYTHONFAULTHANDLER=1 timeout --signal=INT $left python3 -m llmtop bench --out "$dir" --resume --no-plots \
        >> "$dir/bench.log" 2>&1
    fi
    rc=$?; echo "$dir: bench try $try exit $rc"; [ $rc = 0 ] || [ $rc = 124 ] || [ $rc = 130 ] && break
  done
  grep -v "^ " "$dir/bench.log" | grep -v "^\[" | tail -25
  [ -s "$dir/points.jsonl" ] && [ ! -s "$dir/report.md" ] && python3 -m llmtop bench --out "$dir" --report-only >/dev/null
}
case "${1:-}" in
  foundation)
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
    for b in 1 8; do
      run7b --batch $b --prompt-len 128 --json "$OUT/run_7b_sdpa_bs$b.json" | tail -11
      run7b --batch $b --prompt-len 128 --preset baseline --json "$OUT/run_7b_baseline_bs$b.json" | tail -11
    done
    python3 benchmarks/nvml_probe.py --json "$OUT/nvml_probe.json" 2>&1 | grep -E "PASS|FAIL"
    python3 benchmarks/nvml_field_costs.py
    ;;
  opt-a)
    python3 benchmarks/optimizations.py --configs baseline,sdpa,flash,mem_efficient,cudnn,static,tunableop --out "$OUT" 2>&1 | tail -40 ;;
  opt-b)
    python3 benchmarks/optimizations.py --configs baseline,flex,compile_layers,compile_full --out "$OUT" 2>&1 | tail -30 ;;
  opt-c)
    python3 benchmarks/optimizations.py --configs baseline,compile_full --out "$OUT" 2>&1 | tail -14
    grep -cE "Recompiling|cudagraph" "$LLMTOP_CACHE/engine.log" ;;
  configs)  # every configuration available on CUDA, batch 1 and 8, prompt 128 and 2048 (#3)
    timeout --signal=INT 560 python3 benchmarks/optimizations.py \
      --configs baseline,sdpa,flash,mem_efficient,cudnn,flex,static,paged,tunableop,compile_layers,compile_full \
      --out "$OUT" 2>&1 | tee "$OUT/optimizations.log" | grep -v '^{' | tail -60 ;;
  truth)  # issue 15: the default against the baseline from a fresh process each; compile=full
           # with 256 new tokens from prompts 128 and 2048 and no stall inside a measured run;
           # the guard's state per configuration; the CUDA tests
    timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_cuda.py 2>&1 | tail -3
    for p in default baseline; do
      flag=""; [ $p = baseline ] && flag="--preset baseline"
      echo "## $p"; run7b --batch 1 --prompt-len 128 $flag --json "$OUT/run_7b_$p.json" | tail -12
    done
    n0=$(grep -c 'Recompiling' "$LLMTOP_CACHE/engine.log" 2>/dev/null)
    TORCH_LOGS=recompiles timeout --signal=INT 330 python3 benchmarks/optimizations.py --configs baseline,flash,compile_full \
      --batch 1 --prompt-len 128,2048 --max-new-tokens 256 --out "$OUT" 2>&1 | grep -v '^{' | tail -12
    echo "dynamo recompiles logged during optimizations.py: $(( $(grep -c 'Recompiling' "$LLMTOP_CACHE/engine.log") - ${n0:-0} ))" ;;
  checks)  # GPU tests, step profiles, NVML while the engine runs, dashboard overhead
    timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_cuda.py 2>&1 \
      | tee "$OUT/gpu_tests.log" | tail -15
    timeout 150 python3 benchmarks/step_profiles.py --out "$OUT" 2>&1 | head -12
    timeout 100 python3 benchmarks/nvml_probe.py --load-s 6 --engine synthetic:llama-2-7b \
      --json "$OUT/nvml_probe.json" 2>&1 | grep -E "PASS|FAIL|n/a"
    timeout 130 python3 benchmarks/dashboard_overhead.py --model synthetic:llama-2-7b --device cuda \
      --max-new-tokens 128 --runs 3 --headless 2 --rounds 1 --json "$OUT/dashboard_overhead.json" 2>&1 | tail -15 ;;
  recheck)  # the GPU tests, step profiles and NVML-with-engine after the first checks' fixes
    timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_cuda.py 2>&1 \
      | tee "$OUT/gpu_tests.log" | tail -15
    timeout 200 python3 benchmarks/step_profiles.py --out "$OUT" 2>&1 | head -14
    timeout 100 python3 benchmarks/nvml_probe.py --load-s 6 --engine synthetic:llama-2-7b \
      --json "$OUT/nvml_probe.json" 2>&1 | grep -E "PASS|FAIL|n/a" ;;
  study)
    STUDY_BUDGET_S=${STUDY_BUDGET_S:-510} LLMTOP="python3 -m llmtop" benchmarks/study_sweep.sh /tmp/study \
      --config max:attention=sdpa,kv=static,compile=full 2>&1 | tail -25
    tar czf "$OUT/study.tgz" -C /tmp study ;;
  tp)  # needs 2 GPUs (nvidia-h100-x2): TP=2 tokens vs TP=1 on the recommended / named /
        # CUDA_VISIBLE_DEVICES-reordered GPUs, the NCCL share of a step; TTFT/TPOT/telemetry
    python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/gpu/test_tp_gpu.py 2>&1 | tee "$OUT/tp_tests.log" | tail -8
    nvidia-smi topo -m | tee "$OUT/topo.txt"
    python3 -m llmtop info --json > "$OUT/info.json"   # the link matrix and recommended sets
    python3 benchmarks/tp_compare.py --out "$OUT" 2>&1 | tail -14
    python3 benchmarks/tp_compare.py --gpus 1,0 --batch 1 --out "$OUT/named" 2>&1 | tail -9
    # bench: each point's power is charged to the GPUs its ranks ran on (tp=1 on GPU 1 here)
    python3 -m llmtop bench --model synthetic:llama-2-7b --device cuda --tp 1,2 --gpus 1,0 \
      --batch 1 --prompt-len 128 --max-new-tokens 32 --repeat 1 --preset baseline \
      --out "$OUT/bench_tp" --no-plots 2>&1 | tail -6
    python3 - "$OUT/bench_tp/bench.json" <<'PY'
import json, sys
for p in json.load(open(sys.argv[1]))["points"]:
    print("bench tp", p["tp"], "telemetry gpus", [r["telemetry"].get("gpus") for r in p["runs"]],
          "(expected [1] for tp 1, [0, 1] for tp 2)")
PY
    ;;
  overhead)  # TPOT with the dashboard attached vs headless, a pinned kernel (no per-shape plans);
              # first headless TPOT against the engine's thread count (does a GPU engine need a team?)
    for round in 1 2; do for t in 1 4 16; do
      echo "threads $t round $round: $(run7b --opt attention=flash --engine-threads $t 2>/dev/null | grep -E '^TPOT')"
    done; done
    timeout 430 python3 benchmarks/dashboard_overhead.py --model synthetic:llama-2-7b --device cuda \
      --opt attention=flash --max-new-tokens 128 --runs 3 --headless 2 --rounds 4 \
      --json "$OUT/dashboard_overhead.json" 2>&1 | tail -22 ;;
  tp7b)  # 4 GPUs: llmtop bench --tp 1,2,4 on Llama-2-7B (each TP size after a TP>1 one gets a
          # fresh engine), eager and the flash kernel, then compile=full (CUDA graphs) under TP
    rm -rf /tmp/b7 /tmp/b7max
    nvidia-smi topo -m > "$OUT/topo.txt"
    sweep /tmp/b7 320 --model synthetic:llama-2-7b --tp 1,2,4 --batch 1,2,4,8 --max-new-tokens 64 \
      --preset baseline --opt attention=flash
    sweep /tmp/b7max 230 --model synthetic:llama-2-7b --tp 1,2,4 --batch 1,8 --max-new-tokens 64 \
      --config max:attention=sdpa,kv=static,compile=full
    tar czf "$OUT/tp7b.tgz" -C /tmp b7 b7max ;;
  tp70b)  # 4 GPUs: Llama-2-70B at TP 4 then 2 (built shard-first), then the TP tests
    rm -rf /tmp/b70
    sweep /tmp/b70 420 --model synthetic:llama-2-70b --tp 4,2 --batch 1,4 --max-new-tokens 32 --preset baseline
    tar czf "$OUT/tp70b.tgz" -C /tmp b70
    timeout 140 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_tp_gpu.py 2>&1 \
      | tee "$OUT/tp_tests.log" | tail -4 ;;
  nvmlstress)  # several GPUs: which NVML read crashes a sampler while GPU processes come and go
    timeout 150 python3 benchmarks/nvml_stress.py --seconds 75 2>&1 | tee "$OUT/nvml_stress.log" ;;
  tpcheck)  # several GPUs, after the NVLink round-robin and pid-free bench telemetry: the poll
            # rate under process churn, then a 7B sweep over TP 1,2,4 (crashed bench before)
    timeout 100 python3 benchmarks/nvml_stress.py --seconds 40 2>&1 | tee "$OUT/nvml_stress.log"
    rm -rf /tmp/b7c; sweep /tmp/b7c 230 --model synthetic:llama-2-7b --tp 1,2,4 --batch 1,8 \
      --max-new-tokens 32 --preset baseline
    tar czf "$OUT/tpcheck.tgz" -C /tmp b7c ;;
  firstframe)  # where launch -> first frame goes on the GPU image (1.57 s there, 0.6 s on the CPU box)
    for i in 1 2 3; do /usr/bin/time -f "python3 -c pass: %e s" python3 -c pass; done
    for i in 1 2; do /usr/bin/time -f "import llmtop.tui.app: %e s" python3 -c "import llmtop.tui.app"; done
    python3 -X importtime -c "import llmtop.tui.app" 2>&1 | sort -t'|' -k2 -n | tail -8
    python3 -X importtime -c "pass" 2>&1 | sort -t'|' -k2 -n | tail -6
    timeout 200 python3 benchmarks/dashboard_overhead.py --model synthetic:tiny --device cuda \
      --max-new-tokens 32 --runs 1 --headless 1 --rounds 3 2>&1 | grep -E "first|OVERHEAD" ;;
  *) echo "parts: truth foundation opt-a opt-b opt-c configs checks recheck study overhead tp tp7b tp70b nvmlstress tpcheck firstframe"; exit 2 ;;
esac
cp "$LLMTOP_CACHE/engine.log" "$OUT/engine.log" 2>/dev/null
