"""The core (models, distill, data, engine, config) is plain PyTorch: importing it never imports ray or mlflow."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = ["hsakd_ray", "hsakd_ray.models", "hsakd_ray.distill", "hsakd_ray.data", "hsakd_ray.engine", "hsakd_ray.config",
        "hsakd_ray.cli"]


def test_core_imports_without_ray_or_mlflow():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'mlflow'})\n"
        "print(json.dumps(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
