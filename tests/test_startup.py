"""Work a job's processes do not do before its first step: a Train worker imports no MLflow and counts no FLOPs
with nothing to split; a trial's process builds its config without the model registry; the MLflow store opens
while Ray starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python_says(code: str) -> str:
    """What a fresh interpreter running ``code`` (in the repository) prints, stripped; it must exit 0."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_train_worker_code_imports_no_mlflow():
    """A Train worker imports its train function's module: MLflow is the driver's and the controller's business."""
    assert python_says("import sys, hsakd_ray.train.worker; print(sorted({'mlflow'} & set(sys.modules)))") == "[]"


def test_one_thread_skips_the_flop_count(monkeypatch):
    """With one intra-op thread there is nothing to split between teacher and student: no traced forwards."""
    from hsakd_ray.engine import threads
    from hsakd_ray.models import build_model

    def counted(*args):
        raise AssertionError("FLOPs counted for a one-thread worker")

    net = build_model("resnet8", 10, "all")
    monkeypatch.setattr(threads, "forward_flops", counted)
    assert threads.teacher_split(net, net, 16, 1) is None
    with pytest.raises(AssertionError, match="FLOPs counted"):
        threads.teacher_split(net, net, 16, 2)


def quickstart_in_a_trial(tmp_path: Path) -> str:
    """Code that has a fresh interpreter import the trial module and load the quickstart space, as a trial's process
    receives it (pickled), into ``space``."""
    from hsakd_ray.tune.space import load_space

    (tmp_path / "space.pkl").write_bytes(__import__("pickle").dumps(load_space(REPO / "search_spaces" /
                                                                               "quickstart.yaml")))
    return ("import pickle, sys; from hsakd_ray.tune import trial; "
            f"space = pickle.loads(open({str(tmp_path / 'space.pkl')!r}, 'rb').read()); ")


def test_a_trial_process_builds_its_config_without_the_model_registry(tmp_path):
    """A trial's process only builds the trainer from its sampled config: the whole-config checks (which import the
    models, torch and torchvision: a second per trial) are left to its Train worker, which makes them for every
    job. The check moves, it does not vanish: the same bad config passes the trial's build and fails the worker's."""
    from hsakd_ray.config import ConfigError, config_from_dict, config_to_dict
    from hsakd_ray.tune.space import load_space, trial_config

    assert python_says(
        quickstart_in_a_trial(tmp_path) +
        "cfg = trial.trial_config(space, {'distill.temperature': 2.5, 'student.aux_stages': [3]}, "
        "cross_checked=False); "
        "print(cfg.distill.temperature, cfg.student.aux_stages, "
        "sorted({'torchvision', 'hsakd_ray.models'} & set(sys.modules)))") == "2.5 [3] []"

    space = load_space(REPO / "search_spaces" / "quickstart.yaml")
    bad = trial_config(space, {"student.arch": "no_such_net"}, cross_checked=False)
    with pytest.raises(ConfigError, match="no_such_net"):
        config_from_dict(config_to_dict(bad))  # what the worker does first (train/worker.py)
    with pytest.raises(ConfigError, match="no_such_net"):
        trial_config(space, {"student.arch": "no_such_net"})


@pytest.mark.slow
def test_the_mlflow_store_opens_while_ray_starts_and_a_failure_leaves_no_ray(tmp_path):
    """``init_ray_beside`` runs the store's opening on a thread that starts before Ray is up (a fresh sqlite store's
    tables: 2 s of a first job's start, otherwise spent after Ray's 5 to 7 s), returns what it made, and shuts a
    Ray it started down again when the opening fails. In a fresh process: its own local Ray."""
    code = f"""
import threading, ray
from mlflow.tracking import MlflowClient
from hsakd_ray.train.ray_session import init_ray_beside
seen = {{}}
def opening():
    seen['off_main'] = threading.current_thread() is not threading.main_thread()
    seen['before_ray'] = not ray.is_initialized()
    return MlflowClient('sqlite:///{tmp_path}/mlflow.db')
started, client = init_ray_beside(None, opening)
print(started, type(client).__name__, seen['off_main'], seen['before_ray'], ray.is_initialized(),
      (__import__('pathlib').Path('{tmp_path}') / 'mlflow.db').is_file())
ray.shutdown()
def failing():
    raise ValueError('no such store')
try:
    init_ray_beside(None, failing)
except ValueError as exc:
    print('raised', exc, ray.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-2:] == ["True MlflowClient True True True True",
                                                    "raised no such store False"], out.stdout
