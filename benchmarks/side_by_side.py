"""Any benchmark script here, this working tree against a baseline commit, alternating in one run.

The baseline is ``git worktree``'d into a temporary directory; each round runs the script from the baseline tree
(its own copy of the script and package, through ``PYTHONPATH``, which Ray's processes inherit) and then from this
tree, so both sides see the same machine. Every run's output goes to ``--logs`` if given. The figure compared is the
script's last line of the form ``NAME: VALUE`` (``startup_s: 10.25``, ``ratio: 0.53``). Last line
``ratio: R`` = median VALUE of this tree / median VALUE of the baseline.

    python benchmarks/side_by_side.py --baseline 9276ff4 --rounds 2 -- benchmarks/quickstart_wall.py --rounds 1
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^([A-Za-z_][\w/.-]*): (-?[0-9.]+(?:e-?\d+)?)\s*$")


@contextmanager
def baseline_tree(commit: str, folder: Path) -> Iterator[Path]:
    """``commit`` checked out (detached) at ``folder/baseline`` while the block runs, then removed."""
    tree = folder / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                   capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def last_figure(output: str) -> tuple[str, float]:
    for line in reversed(output.splitlines()):
        found = FIGURE.match(line.strip())
        if found:
            return found.group(1), float(found.group(2))
    raise SystemExit(f"no 'NAME: VALUE' line in the output:\n{output[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="the git commit to compare with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--logs", type=Path, help="write each run's output here as <side>-<round>.log")
    ap.add_argument("script", help="a script path relative to the repository, then its arguments after --")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    values: dict[str, list[float]] = {"baseline": [], "this": []}
    name = ""
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmp, baseline_tree(args.baseline, Path(tmp)) as tree:
        for round_ in range(args.rounds):
            for side, root in (("baseline", tree), ("this", ROOT)):
                out = subprocess.run([sys.executable, str(root / args.script), *script_args], cwd=root,
                                     env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
                text = out.stdout + out.stderr
                if args.logs:
                    args.logs.mkdir(parents=True, exist_ok=True)
                    (args.logs / f"{side}-{round_}.log").write_text(text)
                if out.returncode != 0:
                    raise SystemExit(f"{side} run {round_} failed (exit {out.returncode}):\n{text[-3000:]}")
                name, value = last_figure(out.stdout)
                values[side].append(value)
                print(f"round {round_} {side:8} {name}: {value}", flush=True)
    for side, got in values.items():
        print(f"{side}: median {name} {statistics.median(got):.3f} over {len(got)} runs "
              f"({', '.join(f'{v:.2f}' for v in got)})")
    print(f"ratio: {statistics.median(values['this']) / statistics.median(values['baseline']):.3f}")


if __name__ == "__main__":
    main()
