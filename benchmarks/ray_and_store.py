"""A job's first seconds: starting a local Ray, then opening a fresh sqlite MLflow store, against both at once.

``train/ray_session.py::init_ray_beside`` opens the MLflow store on a thread while Ray starts (the main thread waits
on Ray's services most of that time). Each repetition runs both ways in fresh processes (a new Ray each time, a new
store each time: what a user's first ``hsakd-ray tune`` or ``teacher`` meets), alternating, and prints the seconds
from before Ray starts to both being ready. Last line ``ratio: R`` = median beside / median one after the other.
Nothing else using Ray should run meanwhile.

    python benchmarks/ray_and_store.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time
import ray
from mlflow.tracking import MlflowClient
from hsakd_ray.train.ray_session import init_ray, init_ray_beside
uri = "sqlite:///" + sys.argv[2] + "/mlflow.db"
t = time.perf_counter()
if sys.argv[1] == "after":
    init_ray(None)
    MlflowClient(uri)
else:
    init_ray_beside(None, lambda: MlflowClient(uri))
print(f"seconds: {time.perf_counter() - t:.2f}")
ray.shutdown()
"""


def one(mode: str) -> float:
    with tempfile.TemporaryDirectory() as store:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, store], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1].split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"after": [], "beside": []}
    for i in range(args.rounds):
        for mode in times:
            times[mode].append(one(mode))
            print(f"round {i} {mode:<6} {times[mode][-1]:.2f} s", flush=True)
    for mode, values in times.items():
        print(f"{mode}: median {statistics.median(values):.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"ratio: {statistics.median(times['beside']) / statistics.median(times['after']):.3f}")


if __name__ == "__main__":
    main()
