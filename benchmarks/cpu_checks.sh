#!/usr/bin/env bash
# step_throughput.py on this machine's CPU, once per variant (flags as one word each; default: every variant in
# the CPU table of docs/performance.md), each variant's reference and project steps interleaved in one process. Logged to
# OUT/log. Run it on a quiet machine: the whole set takes about 15 minutes on 2 cores.
#     bash benchmarks/cpu_checks.sh benchmarks/results/cpu
#     bash benchmarks/cpu_checks.sh OUT "" "--precision fp32"
set -uo pipefail
out=${1:-cpu-checks}
shift || true
variants=("$@")
if [ ${#variants[@]} -eq 0 ]; then
    variants=("--precision fp32 --no-channels-last --no-inference-mode --no-overlap --cpu-chunk-rows 0 --no-fused-sgd"
              "--precision fp32" "--precision fp32 --no-overlap" "--precision fp32 --cpu-chunk-rows 0"
              "--precision fp32 --no-channels-last" "--precision fp32 --compile" "--precision bf16" "")
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{
    for flags in "${variants[@]}"; do
        echo "=== step_throughput.py --device cpu --steps 2 --repeats 4 --warmup 1 $flags"
        # shellcheck disable=SC2086
        python benchmarks/step_throughput.py --device cpu --steps 2 --repeats 4 --warmup 1 $flags 2>&1 \
            | grep -v Warning
    done
} 2>&1 | tee "$out/log"
