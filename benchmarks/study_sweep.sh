#!/usr/bin/env bash
# The study's two charts on one NVIDIA GPU: Llama-2-7B shapes (synthetic weights, real timings),
# prompt 2048 tokens, 128 new tokens, batch 1, 2, 4, 8, baseline (transformers eager attention,
# dynamic cache) vs each optimization of the study that runs on CUDA. Writes into OUTDIR:
# points.jsonl (as it measures), bench.json, bench.csv, report.md (+ PNG charts where matplotlib
# is installed), bench.log, engine.log, gpu.txt.
#
#   benchmarks/study_sweep.sh OUTDIR [extra `llmtop bench` arguments]
#
# Budget: about 6-7 minutes on an H100 (TPOT ~40 ms/token for the uncompiled configurations, so
# ~5 s per measured run; 6 configurations x 4 batches x (1 short warm-up + 2 runs)). A hard stop
# at STUDY_BUDGET_S seconds (default 480) interrupts the sweep cleanly: the reports are written
# from what was measured, and running the script again with the same OUTDIR resumes it.
# LLMTOP overrides the command (default: llmtop; e.g. LLMTOP="python -m llmtop").
set -uo pipefail

out=${1:?usage: benchmarks/study_sweep.sh OUTDIR [extra llmtop bench arguments]}
shift
budget=${STUDY_BUDGET_S:-480}
read -r -a llmtop <<< "${LLMTOP:-llmtop}"
mkdir -p "$out"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv 2>&1
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" 2>&1
} > "$out/gpu.txt"
cat "$out/gpu.txt"

resume=()
[ -s "$out/points.jsonl" ] && resume=(--resume)

# The study's configurations: FlashAttention-2 and memory-efficient attention kernels (through
# SDPA, switched in place), TunableOp GEMMs, the per-layer torch.compile of self-attention, and
# the study's whole stack. The order keeps model reloads (compile on/off) to two and puts the
# slow compiles last, so a sweep cut by the budget still has the attention comparison.
timeout --signal=INT --kill-after=60 "$budget" "${llmtop[@]}" bench \
  --model synthetic:llama-2-7b --device cuda --dtype bf16 \
  --prompt-len 2048 --max-new-tokens 128 --batch 1,2,4,8 \
  --repeat 2 --warmup 1 --warmup-tokens 16 \
  --config flash:attention=flash \
  --config mem_efficient:attention=mem_efficient \
  --config tunableop:gemm=tunableop \
  --config compile:compile=layers \
  --config study:attention=flash,compile=layers,gemm=tunableop \
  --out "$out" "${resume[@]}" "$@" 2>&1 | tee -a "$out/bench.log"
rc=${PIPESTATUS[0]}

if [ "$rc" -eq 124 ] || [ "$rc" -eq 130 ]; then
  echo "study_sweep: stopped at the ${budget} s budget; run the same command again to resume"
fi
if [ -s "$out/points.jsonl" ] && [ ! -s "$out/report.md" ]; then
  "${llmtop[@]}" bench --out "$out" --report-only --no-plots > /dev/null
fi
if ! python -c "import matplotlib" 2>/dev/null; then
  echo "study_sweep: no matplotlib here, so no PNG charts; rebuild them anywhere it is installed:"
  echo "  llmtop bench --out $out --report-only"
fi
ls -l "$out"
exit "$rc"
