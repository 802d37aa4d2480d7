#!/usr/bin/env bash
# The GPU checks in one go, for a lent GPU machine: the CUDA tests of tests/test_fast_path.py (PyTorch only), a
# TorchTrainer job on the GPUs over NCCL (tests/test_gpu_job.py, where Ray and MLflow are installed), then
# step_throughput.py once per variant (flags as one word each; default: every variant in the GPU table of
# docs/performance.md).
# Everything is logged to OUT/log.
#     bash benchmarks/gpu_checks.sh OUT                       # tests + all variants (~8 minutes on an H200)
#     bash benchmarks/gpu_checks.sh OUT "" "--batch 128"      # tests + the listed variants only
set -uo pipefail
out=${1:-gpu-checks}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
    variants=("" "--precision fp32" "--no-channels-last" "--no-device-data" "--no-fused-sgd" "--batch 128"
              "--batch 128 --precision fp32" "--compile --compile-mode default" "--compile"
              "--compile --precision fp32" "--compile --batch 128")
fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    timeout 300 python3 -m pytest tests/test_fast_path.py -q --noconftest -p no:cacheprovider -rs 2>&1 | tail -n 15
    # a TorchTrainer job with use_gpu (Ray's NCCL process group), where Ray and MLflow are installed
    if python3 -c "import ray.train.torch, mlflow" 2>/dev/null; then
        timeout 600 python3 -m pytest tests/test_gpu_job.py -q --noconftest -p no:cacheprovider -rs 2>&1 | tail -n 15
    else
        echo "tests/test_gpu_job.py: not run (Ray or MLflow not installed here: pip install -e . first)"
    fi
    for flags in "${variants[@]}"; do
        echo "=== step_throughput.py $flags"
        # shellcheck disable=SC2086
        timeout 240 python3 benchmarks/step_throughput.py --device cuda --steps 20 --repeats 5 --warmup 5 $flags 2>&1 \
            | grep -v "^ *[0-9]\+  " | grep -v Warning
    done
} 2>&1 | tee "$out/log"
