"""Trial start-up (issue 15): the stamps benchmarks/trial_startup.py reads, and work a Train worker no longer does
before its first step (MLflow imports, a FLOP count with nothing to split)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsakd_ray import stamps

REPO = Path(__file__).resolve().parents[1]


def test_stamps_are_written_per_process_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.delenv(stamps.ENV, raising=False)
    stamps.stamp("nothing")  # off: writes nowhere, raises nothing
    assert not stamps.enabled()
    monkeypatch.setenv(stamps.ENV, str(tmp_path))
    stamps.set_label("trial_1")
    stamps.stamp("trial_fn")
    stamps.stamp("tuner_fit", t=123.0, label="sweep")
    found = stamps.read_stamps(tmp_path)
    assert [(s["phase"], s["label"], s["pid"]) for s in found] == [("tuner_fit", "sweep", os.getpid()),
                                                                   ("trial_fn", "trial_1", os.getpid())]
    assert [p.name for p in tmp_path.iterdir()] == [f"{os.getpid()}.jsonl"]
    stamps.set_label("")


def python_says(code: str) -> str:
    """What a fresh interpreter running ``code`` (in the repository) prints, stripped; it must exit 0."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_process_start_is_this_process_s():
    """A child started now reports a start within a second of now (not the boot time or another process's)."""
    before = time.time()
    started = float(python_says("from hsakd_ray.stamps import process_started; print(process_started())"))
    assert before - 0.5 <= started <= time.time()


def test_train_worker_code_imports_no_mlflow():
    """A Train worker imports its train function's module: MLflow is the driver's and the controller's business."""
    assert python_says("import sys, hsakd_ray.train.worker; print(sorted({'mlflow'} & set(sys.modules)))") == "[]"


def test_one_thread_skips_the_flop_count(monkeypatch):
    """With one intra-op thread there is nothing to split between teacher and student: no traced forwards."""
    from hsakd_ray.engine import fastpath
    from hsakd_ray.models import build_model

    def counted(*args):
        raise AssertionError("FLOPs counted for a one-thread worker")

    net = build_model("resnet8", 10, "all")
    monkeypatch.setattr(fastpath, "forward_flops", counted)
    assert fastpath.teacher_split(net, net, 16, 1) is None
    with pytest.raises(AssertionError, match="FLOPs counted"):
        fastpath.teacher_split(net, net, 16, 2)


def test_local_ray_starts_without_train_preemption_watchers_unless_told(monkeypatch):
    """A Ray started here is one node that no cloud drains: Train's per-trial preemption watcher (one more process
    per trial) is switched off through the environment Ray's processes inherit; a value the user set wins."""
    from hsakd_ray.train import ray_session

    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    assert ray_session.local_train_env() == {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    assert ray_session.local_train_env() == {}
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR, ENV_VARS_TO_PROPAGATE

    # the name Ray reads, and one Train passes on to its controller and workers
    assert ENABLE_PREEMPTION_WATCHER_ENV_VAR in ray_session.LOCAL_TRAIN_ENV
    assert ENABLE_PREEMPTION_WATCHER_ENV_VAR in ENV_VARS_TO_PROPAGATE


def test_a_job_without_ray_datasets_starts_no_dataset_manager():
    """Train V2 gives every run a Ray Data DatasetManager actor (a process importing Ray Data); a job here passes no
    Ray Datasets, so its trainer leaves that callback out. Given datasets, it keeps it. (test_train_ray.py checks
    that a real job starts no such actor.)"""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from hsakd_ray.config import config_from_dict
    from hsakd_ray.train.trainer import Trainer, build_trainer

    def kinds(trainer) -> list[str]:
        return [type(cb).__name__ for cb in trainer._create_default_callbacks()]

    trainer = build_trainer(config_from_dict({}), "teacher", "job", "/tmp/unused")
    assert "DatasetsCallback" not in kinds(trainer)
    assert "PlacementGroupCleanerCallback" in kinds(trainer)  # everything else is Ray's
    with_data = Trainer(lambda: None, datasets={"train": lambda: None})
    assert any(isinstance(cb, DatasetsCallback) for cb in with_data._create_default_callbacks())


def quickstart_in_a_trial(tmp_path: Path) -> str:
    """Code that has a fresh interpreter import the trial module and load the quickstart space, as a trial's process
    receives it (pickled), into ``space``."""
    from hsakd_ray.tune.space import load_space

    (tmp_path / "space.pkl").write_bytes(__import__("pickle").dumps(load_space(REPO / "search_spaces" /
                                                                               "quickstart.yaml")))
    return ("import pickle, sys; from hsakd_ray.tune import trial; "
            f"space = pickle.loads(open({str(tmp_path / 'space.pkl')!r}, 'rb').read()); ")


def test_a_trial_and_its_train_controller_import_no_torch(tmp_path):
    """A trial's process builds its trainer (its kept metric given, as the sweep's driver gives it) and Train's
    controller unpickles what it is given (the run's context, the backend and every callback): neither imports
    torch (2 to 3 CPU-seconds each), only the workers do. With Ray's ``TorchConfig`` the controller's unpickling
    would import it (its module imports torch)."""
    shipped = tmp_path / "controller.pkl"
    assert python_says(
        quickstart_in_a_trial(tmp_path) + "from ray import cloudpickle; "
        "cfg = trial.trial_config(space, {'distill.temperature': 2.5}, cross_checked=False); "
        f"t = trial.build_trainer(cfg, 'distill', 'trial', {str(tmp_path)!r}, teacher_files={{'a': b''}}, "
        "kept='val/top1'); "
        "blob = cloudpickle.dumps((t.train_run_context, t._create_default_callbacks(), t.backend_config)); "
        f"open({str(shipped)!r}, 'wb').write(blob); print('torch' in sys.modules)") == "False"
    assert python_says(
        "import pickle, sys; "
        f"context, callbacks, backend = pickle.loads(open({str(shipped)!r}, 'rb').read()); "
        "assert type(backend).__name__ == 'TorchGroupConfig' and backend.backend == 'gloo'; "
        "assert 'BackendSetupCallback' in [type(c).__name__ for c in callbacks]; "
        "backend.backend_cls(); print('torch' in sys.modules)") == "False"


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
