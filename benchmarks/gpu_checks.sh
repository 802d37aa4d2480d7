#!/usr/bin/env bash
# The fast path's GPU checks in one go, for a lent GPU machine with PyTorch but without this project's other
# dependencies: the CUDA tests of tests/test_fast_path.py, then step_throughput.py with each feature switched off in
# turn, then with torch.compile. Everything is logged to ${1:-gpu-checks}/log.
#     bash benchmarks/gpu_checks.sh "$OUT"
set -uo pipefail
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
bench() {
    echo "=== step_throughput.py $*"
    timeout 240 python3 benchmarks/step_throughput.py --device cuda --steps 20 --repeats 5 --warmup 5 "$@" 2>&1 \
        | grep -v "^ *[0-9]\+  " | grep -v Warning
}
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    timeout 300 python3 -m pytest tests/test_fast_path.py -q --noconftest -p no:cacheprovider -rs 2>&1 | tail -n 15
    bench
    bench --no-bf16
    bench --no-channels-last
    bench --no-device-data
    bench --no-fused-sgd
    bench --batch 128
    bench --compile
    bench --compile --compile-mode reduce-overhead
} 2>&1 | tee "$out/log"
