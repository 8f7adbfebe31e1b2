#!/usr/bin/env bash
# One device call for issue 16 (the `device` tool's `run`, from the repo root, carrying .whl and
# .wt/peers): installs the carried wheels and llmtop into /tmp/s, runs the GPU tests, then
# benchmarks/native_decode.py with the arguments given (default: the whole table).
#   [GPU_TESTS=0] [GPU_TESTS_K=expr] [BENCH_TIMEOUT=s] benchmarks/native_h200_call.sh [native_decode.py args...]
#   BENCH=native_mlp_split.py GPU_TESTS=0 benchmarks/native_h200_call.sh   (another script)
set -uo pipefail
R=$PWD
rm -rf /tmp/s /tmp/w
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/s .
export PYTHONPATH=/tmp/s PYTHONUNBUFFERED=1
mkdir /tmp/w && cp -r tests benchmarks /tmp/w && cd /tmp/w
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, '| triton', triton.__version__, '| transformers', transformers.__version__)"
[ "${GPU_TESTS:-1}" = 0 ] || timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider -m gpu ${GPU_TESTS_K:+-k "$GPU_TESTS_K"} tests/gpu/test_native_gpu.py 2>&1 | tail -15
if [ "${BENCH:-native_decode.py}" = native_decode.py ]; then
    timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/native_decode.py --gptfast "$R/.wt/peers/gpt-fast" "$@"
else
    timeout "${BENCH_TIMEOUT:-420}" python3 "benchmarks/$BENCH" "$@"
fi
