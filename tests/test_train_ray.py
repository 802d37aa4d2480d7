"""``hsakd-ray teacher|distill`` as Ray Train jobs, each one MLflow run, checked with real components only: a real
local Ray cluster (2 CPU workers, gloo DDP), real MLflow stores (a sqlite file and an ``mlflow server`` on
127.0.0.1), real processes killed with real signals.

In-process jobs share one Ray cluster (``ray_cluster``); the driver tests run ``hsakd-ray`` as a child process that
starts its own Ray instance. The jobs that are compared with each other (uninterrupted, worker killed, driver killed
and resumed) use one training config, so their final weights must agree exactly (deterministic CPU training).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml
from conftest import (
    alive,
    descendants,
    server_pids,
    start_cli,
    tiny_config,
    wait_for_no_processes,
    write_config,
)
from mlflow.tracking import MlflowClient
from ray.train import Result
from torch import nn

import hsakd_ray
from hsakd_ray.config import config_from_dict, config_to_dict, flatten, load_config
from hsakd_ray.engine import Runtime, load_train_state, read_meta, run_job
from hsakd_ray.engine.checkpoint import load_tensor_file
from hsakd_ray.engine.precision import cpu_flags, resolve_precision
from hsakd_ray.engine.selection import is_summary_metric
from hsakd_ray.tracking import runs as R
from hsakd_ray.tracking.epoch_logger import BACKFILLED_TAG, FAILURES_TAG, RESUMED_TAG, backfill_epochs
from hsakd_ray.train.compute import KEYS as COMPUTE_KEYS
from hsakd_ray.train.job import read_start_checkpoint, run_ray_job
from hsakd_ray.train.job_spec import Job
from hsakd_ray.train.trainer import build_trainer

pytestmark = pytest.mark.slow

EPOCHS = 2
REGISTERED = "tiny-teacher"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """The module's directory, also its working directory: a sqlite store puts artifacts under ./mlruns."""
    root = tmp_path_factory.mktemp("train-ray")
    before = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(before)


@pytest.fixture(scope="module")
def sqlite_uri(workspace) -> str:
    return f"sqlite:///{workspace / 'store.db'}"  # not ./mlflow.db, MLflow's default store


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the in-process jobs; after the module no Ray process may remain."""
    ray.init(address="local", num_cpus=2, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    left = wait_for_no_processes(exclude=server_pids())
    assert not left, f"Ray processes left after ray.shutdown(): {left}"


def teacher_config(workspace: Path, run_name: str, **tracking) -> dict:
    """The training config shared by every job whose weights are compared: ~1,000 images, so an epoch lasts long
    enough (seconds) for a test to kill something in the middle of epoch 2."""
    return tiny_config(
        data={"synthetic_train_size": 1024, "synthetic_test_size": 128},
        train={"epochs": EPOCHS, "batch_size": 64, "output_dir": str(workspace / "outputs")},
        ray={"storage_path": str(workspace / "ray_results"), "max_failures": 2},
        tracking={"experiment": "train-ray", "run_name": run_name, **tracking},
    )


@pytest.fixture(scope="module")
def reference_teacher(ray_cluster, workspace, sqlite_uri, mlflow_server_process) -> dict:
    """An uninterrupted 2-worker teacher job on the sqlite store, registered as a model (while it runs, the MLflow
    server of the driver test boots)."""
    path = write_config(workspace / "teacher.yaml", teacher_config(workspace, "teacher-ref",
                                                                   register_model=REGISTERED))
    out = run_ray_job(load_config(path), "teacher", config_path=str(path), tracking_uri=sqlite_uri)
    return {**out, "config": path, "name": "teacher-ref"}


# ---------------------------------------------------------------- helpers

def run_by_name(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name("train-ray")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{R.NAME_TAG}` = '{name}'")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def metric_steps(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    """Every per-epoch metric of the run (not the end-of-run summary) -> the sorted steps of all its logged values."""
    keys = [k for k in client.get_run(run_id).data.metrics if not is_summary_metric(k)]
    return {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in keys}


def assert_one_value_per_epoch(client: MlflowClient, run_id: str, required: set[str]) -> None:
    steps = metric_steps(client, run_id)
    assert required <= set(steps), f"missing metrics: {sorted(required - set(steps))}"
    wrong = {k: v for k, v in steps.items() if v != list(range(1, EPOCHS + 1))}
    assert not wrong, f"metrics without exactly one value per epoch 1..{EPOCHS}: {wrong}"


def checkpoints(storage: Path) -> dict[int, Path]:
    """A Ray run's checkpoint directories by the epoch their meta.json records."""
    found = {}
    for directory in storage.glob("checkpoint_*"):
        if not directory.is_dir():  # checkpoint_manager_snapshot.json
            continue
        epoch = read_meta(directory)["epoch"]
        assert epoch not in found, f"two checkpoints of epoch {epoch} in {storage}"
        found[epoch] = directory
    return found


def latest_checkpoint(workspace: Path, name: str) -> Path:
    """The latest checkpoint Ray registered for run ``name`` (an interrupted report can leave an unregistered
    checkpoint directory beside it, which Ray ignores on resume)."""
    return Path(Result.from_path(str(workspace / "ray_results" / name)).checkpoint.path)


def final_weights(workspace: Path, name: str) -> dict[str, torch.Tensor]:
    latest = latest_checkpoint(workspace, name)
    assert read_meta(latest)["epoch"] == EPOCHS
    return load_tensor_file(latest / "model.pt")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if tolerance:
            torch.testing.assert_close(a[key], b[key], **tolerance, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(a[key], b[key]), f"{key} differs"


def teacher_metrics(heads: int = 3) -> set[str]:
    heads_acc = {f"test/head_{i}_{kind}_acc" for i in range(heads) for kind in ("ssl", "class")}
    losses = {"train/loss", "train/ce"} | {f"train/aux_ce_{i}" for i in range(heads)}
    return losses | heads_acc | {"lr", "test/top1", "test/top5", "images_per_sec", "epoch_time",
                                  "epoch_total_time"}


def assert_job_run(client: MlflowClient, run_id: str, config: Path, kind: str, source: str, storage: Path) -> None:
    """Status, params, tags and artifacts of a finished job's run."""
    run = client.get_run(run_id)
    name = run.data.tags[R.NAME_TAG]
    assert run.info.status == "FINISHED"
    expected = {k: str(v) for k, v in flatten(config_to_dict(load_config(config))).items()}
    assert run.data.params == expected
    written = yaml.safe_load(Path(config).read_text())  # a few, straight from the file the job was given
    params = run.data.params
    assert params["train.epochs"] == str(written["train"]["epochs"]) == str(EPOCHS)
    assert params["scaling.num_workers"] == "2" and params["optim.lr"] == "0.05"
    assert params["student.arch"] == "resnet8" and params["optim.milestones"] == "[]"
    assert params["tracking.run_name"] == name and params["distill.temperature"] == "3.0"  # a default
    tags = run.data.tags
    assert tags["hsakd.kind"] == kind
    assert tags["hsakd.teacher_source"] == source
    assert tags["hsakd.version"] == hsakd_ray.__version__
    assert tags["ray.run_name"] == name
    assert tags["ray.storage_path"] == str(storage)
    assert len(tags.get("mlflow.source.git.commit", "")) == 40  # the tests run from the git checkout
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "learning_curves.png", "checkpoint"} <= top
    assert {"checkpoint/meta.json", "checkpoint/model.pt"} <= {a.path for a in client.list_artifacts(run_id,
                                                                                                   "checkpoint")}
    local = Path(client.download_artifacts(run_id, "learning_curves.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def distilled_student(reference_teacher, workspace, sqlite_uri) -> dict:
    """A 2-worker HSAKD student of the reference teacher, named by ``runs:/``; one checkpoint, after epoch 2, so
    epoch 1's metrics reach MLflow only with it (the buffered path of the epoch logger)."""
    reference = f"runs:/{reference_teacher['run_id']}/checkpoint"
    path = write_config(workspace / "distill.yaml", tiny_config(
        teacher={"arch": "resnet8", "checkpoint": reference},
        student={"arch": "resnet8", "aux_stages": "all"},
        distill={"method": "hsakd"},
        train={"epochs": EPOCHS, "batch_size": 32, "checkpoint_every": EPOCHS,
               "output_dir": str(workspace / "outputs")},
        ray={"storage_path": str(workspace / "ray_results")},
        tracking={"experiment": "train-ray", "run_name": "student"},
    ))
    out = run_ray_job(load_config(path), "distill", config_path=str(path), tracking_uri=sqlite_uri)
    return {**out, "config": path, "teacher_ref": reference, "name": "student"}


@pytest.mark.timeout(240, method="thread")
def test_teacher_job_is_one_complete_mlflow_run(reference_teacher, workspace, sqlite_uri):
    client = MlflowClient(sqlite_uri)
    storage = workspace / "ray_results"
    teacher_id = reference_teacher["run_id"]
    assert [r.info.run_id for r in run_by_name(client, "teacher-ref")] == [teacher_id]
    assert_job_run(client, teacher_id, reference_teacher["config"], "teacher", "scratch", storage)
    assert_one_value_per_epoch(client, teacher_id, teacher_metrics())
    # what the worker's fast path resolved train.precision / train.compile to (auto on a CPU worker)
    tags = client.get_run(teacher_id).data.tags
    assert tags["hsakd.precision"] == resolve_precision("auto", "cpu", cpu_flags()).value
    assert tags["hsakd.compile"] == "eager"

    # evaluated on the test set: no metric ranks checkpoints, so Ray keeps only the latest and the run's checkpoint
    # artifact is the last epoch's (never chosen by test accuracy); the run reports last and best-epoch test top-1
    top1 = {m.step: m.value for m in client.get_metric_history(teacher_id, "test/top1")}
    best_epoch = max(sorted(top1), key=lambda e: top1[e])
    assert set(checkpoints(storage / "teacher-ref")) == {EPOCHS}
    artifact = Path(client.download_artifacts(teacher_id, "checkpoint"))
    assert read_meta(artifact)["epoch"] == EPOCHS
    summary = client.get_run(teacher_id).data.metrics
    assert summary["test/top1_last"] == top1[EPOCHS] and summary["test/top1_best_epoch"] == top1[best_epoch]
    assert summary["test/top1_best_epoch_num"] == best_epoch


@pytest.mark.timeout(240, method="thread")
def test_distill_job_names_its_teacher_by_runs_uri(distilled_student, workspace, sqlite_uri):
    client = MlflowClient(sqlite_uri)
    run_id = distilled_student["run_id"]
    assert_job_run(client, run_id, distilled_student["config"], "distill", distilled_student["teacher_ref"],
                   workspace / "ray_results")
    distill_losses = {"train/loss", "train/ce", "train/kl_final"} | {f"train/kl_head_{i}" for i in range(3)}
    heads_and_rest = teacher_metrics() - {"train/ce", "train/loss"} - {f"train/aux_ce_{i}" for i in range(3)}
    assert_one_value_per_epoch(client, run_id, distill_losses | heads_and_rest)
    assert not {k for k in client.get_run(run_id).data.metrics if "aux_ce" in k}
    # compute in view: running totals every epoch; the student logged as an MLflow 3 LoggedModel of the run
    assert_one_value_per_epoch(client, run_id, set(COMPUTE_KEYS))
    cpu = [m.value for m in sorted(client.get_metric_history(run_id, "compute/cpu_seconds"), key=lambda m: m.step)]
    assert 0 < cpu[0] <= cpu[-1]
    assert "checkpoint" in {a.path for a in client.list_artifacts(run_id)}
    assert len(client.get_run(run_id).outputs.model_outputs) == 1  # the run's "Logged models": the student


@pytest.mark.timeout(120, method="thread")
def test_resume_backfills_epochs_a_checkpoint_made_durable_but_mlflow_missed(reference_teacher, distilled_student,
                                                                               workspace, sqlite_uri):
    """The driver can die after Ray persisted a checkpoint and before the controller logged its epochs; --resume
    then logs them from the latest checkpoint. The student's only checkpoint is after epoch 2; the teacher has one
    per epoch, and Ray deleted the one after epoch 1 when it persisted the next: its latest checkpoint must still
    give back epoch 1 too (a driver killed after two checkpoints lost the first one's epochs before)."""
    client = MlflowClient(sqlite_uri)
    experiment = client.get_experiment_by_name("train-ray").experiment_id
    for job in (distilled_student, reference_teacher):
        empty = client.create_run(experiment, run_name=f"missed-epochs-{job['name']}").info.run_id
        ray_run = str(workspace / "ray_results" / job["name"])
        assert backfill_epochs(client, empty, ray_run) == [1, 2], job["name"]
        assert backfill_epochs(client, empty, ray_run) == []  # idempotent
        original = job["run_id"]
        for key in metric_steps(client, original):
            logged = [(m.step, m.value) for m in client.get_metric_history(empty, key)]
            assert logged == sorted((m.step, m.value) for m in client.get_metric_history(original, key)), key
        assert client.get_run(empty).data.tags[BACKFILLED_TAG] == "1,2"
        client.set_terminated(empty, "FINISHED")


@pytest.mark.timeout(120, method="thread")
def test_registered_teacher_resolves_as_models_uri(reference_teacher, workspace, sqlite_uri):
    client = MlflowClient(sqlite_uri)
    teacher_id = reference_teacher["run_id"]
    assert client.get_run(teacher_id).data.tags["hsakd.registered_model"] == f"models:/{REGISTERED}/1"
    assert client.get_model_version(REGISTERED, "1").run_id == teacher_id
    cfg = config_from_dict(tiny_config(teacher={"arch": "resnet8", "checkpoint": f"models:/{REGISTERED}/1"},
                                       train={"output_dir": str(workspace / "outputs")}))
    files = read_start_checkpoint(cfg, "distill", sqlite_uri)  # what the driver ships to the workers
    artifact = Path(client.download_artifacts(teacher_id, "checkpoint"))
    assert files["model.pt"] == (artifact / "model.pt").read_bytes()
    assert cfg.teacher.checkpoint == f"models:/{REGISTERED}/1"  # the run's params name the reference


# ---------------------------------------------------------------- DDP

class PerWorkerBatchNorm(nn.Module):
    """Runs ``module`` separately on the rows each of ``world`` DDP workers would hold, so BatchNorm normalises
    over the same groups as in DDP, and puts the outputs back in batch order.

    Image ``i`` of a global batch (the DistributedSampler's permutation) goes to worker ``i % world``; a rotated
    batch has 4 rows per image, image-major.
    """

    def __init__(self, module: nn.Module, world: int = 2, rows_per_image: int = 4) -> None:
        super().__init__()
        self.module, self.world, self.rows_per_image = module, world, rows_per_image

    def forward(self, x: torch.Tensor):
        image = torch.arange(x.shape[0], device=x.device) // self.rows_per_image
        groups = [torch.nonzero(image % self.world == r).squeeze(1) for r in range(self.world)]
        outputs = [self.module(x[g]) for g in groups]
        inverse = torch.argsort(torch.cat(groups))
        logits = torch.cat([o[0] for o in outputs])[inverse]
        aux = [torch.cat([o[1][i] for o in outputs])[inverse] for i in range(len(outputs[0][1]))]
        return logits, aux


def one_step_in_process(cfg_dict: dict, tmp: Path, wrap) -> tuple[float, dict[str, torch.Tensor]]:
    saved = {}

    def report(epoch: int, metrics: dict, save) -> None:
        saved["loss"], saved["dir"] = metrics["train/loss"], save(tmp / f"epoch{epoch}")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a worker with cpus_per_worker 1
    try:
        run_job(config_from_dict(cfg_dict), "teacher", Runtime(world_size=1, wrap=wrap, report=report))
    finally:
        torch.set_num_threads(threads)
    return saved["loss"], load_tensor_file(saved["dir"] / "model.pt")


def parameters_only(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith(BN_BUFFERS)}


@pytest.mark.timeout(240, method="thread")
def test_two_ddp_workers_match_one_worker_on_the_global_batch(ray_cluster, workspace, tmp_path):
    """2 workers with global batch 2b == 1 worker with batch 2b: same first-step loss, same updated weights.

    Everything but BatchNorm is exactly comparable: DDP averages the per-worker gradients of per-worker mean losses,
    which is the gradient of the mean loss over the global batch. BatchNorm in training mode normalises per worker
    (SyncBatchNorm is GPU-only in torch), so 2 workers x b rows legitimately differ from 1 x 2b. The one-worker
    reference is therefore the real in-process ``run_job`` with its ``wrap`` hook (where a worker applies DDP)
    running the network once per worker's half of the batch (``PerWorkerBatchNorm``); the two-worker side is the
    real TorchTrainer, ``train_loop_per_worker`` and ``prepare_model`` (DDP over gloo). One epoch of 2b images is
    exactly one step; augmentation is off so neither side draws random numbers for data. BN running statistics are
    left out of the comparison (DDP broadcasts rank 0's; they do not affect the step). A control shows the check
    is not vacuous: without the per-worker BN grouping the weights differ.
    """
    b = 8
    cfg = tiny_config(
        data={"synthetic_train_size": 2 * b, "synthetic_test_size": 32, "augment": False},
        train={"epochs": 1, "batch_size": 2 * b, "precision": "fp32"},  # the equivalence is exact in fp32 only
        ray={"storage_path": str(workspace / "ray_results")},
    )
    trainer = build_trainer(Job(config_from_dict(cfg), "teacher", "ddp-two-workers", str(workspace / "ray_results")))
    assert isinstance(trainer, ray.train.torch.TorchTrainer)  # Ray's own, with Ray's torch backend (gloo here)
    result = trainer.fit()
    ddp_loss = result.metrics["train/loss"]
    ddp_state = parameters_only(load_tensor_file(Path(result.checkpoint.path) / "model.pt"))

    one_cfg = {**cfg, "scaling": {"num_workers": 1, "cpus_per_worker": 1}}
    loss, state = one_step_in_process(one_cfg, tmp_path / "grouped", PerWorkerBatchNorm)
    assert ddp_loss == pytest.approx(loss, rel=1e-5)
    assert_same_weights(ddp_state, parameters_only(state), rtol=1e-5, atol=1e-6)

    _, plain = one_step_in_process(one_cfg, tmp_path / "plain", lambda m: m)
    with pytest.raises(AssertionError):
        assert_same_weights(ddp_state, parameters_only(plain), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- faults

def kill_one_worker_after_epoch_1(client: MlflowClient, gcs_address: str, killed: list) -> None:
    """Once epoch 1 is in MLflow (so its checkpoint is persisted), SIGKILL one Ray Train worker process. The workers
    are looked up while epoch 1 runs, so the kill follows the log by a poll interval, early in epoch 2."""
    from ray.util.state import list_actors

    def workers() -> list:
        alive_workers = [("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
        try:
            return list_actors(address=gcs_address, filters=alive_workers)
        except Exception:  # the State API (dashboard) can be slow to answer on a busy machine: ask again
            return []

    try:
        run_id = wait_for(lambda: run_by_name(client, "teacher-workerkill"), 180, "the run")[0].info.run_id
        group = wait_for(lambda: (found := workers()) and len(found) == 2 and found, 180, "2 training workers")
        wait_for(lambda: 1 in R.logged_epochs(client, run_id), 180, "epoch 1 in MLflow", interval=0.1)
        os.kill(group[0].pid, signal.SIGKILL)
        killed.append({"pid": group[0].pid, "logged": R.logged_epochs(client, run_id)})
    except Exception as exc:  # reported by the test, not lost in the thread
        killed.append({"error": repr(exc)})


@pytest.mark.timeout(360, method="thread")
def test_sigkilled_worker_resumes_from_checkpoint_into_the_same_run(ray_cluster, reference_teacher, workspace,
                                                                    sqlite_uri):
    client = MlflowClient(sqlite_uri)
    path = write_config(workspace / "workerkill.yaml", teacher_config(workspace, "teacher-workerkill"))
    killed: list = []
    killer = threading.Thread(target=kill_one_worker_after_epoch_1, args=(client, ray_cluster, killed), daemon=True)
    killer.start()
    out = run_ray_job(load_config(path), "teacher", config_path=str(path), tracking_uri=sqlite_uri)
    killer.join(timeout=10)

    assert killed and "error" not in killed[0], killed
    assert killed[0]["logged"] == {1}  # killed during epoch 2
    assert not alive(killed[0]["pid"])
    runs = run_by_name(client, "teacher-workerkill")
    assert [r.info.run_id for r in runs] == [out["run_id"]]
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags[FAILURES_TAG] == "1"
    assert run.data.tags[RESUMED_TAG] == "2"  # restarted from epoch 1's checkpoint, not from scratch
    assert_one_value_per_epoch(client, out["run_id"], teacher_metrics())
    # the resumed job ends where the uninterrupted one does
    assert_same_weights(final_weights(workspace, "teacher-workerkill"), final_weights(workspace, "teacher-ref"))
    ref = client.get_run(reference_teacher["run_id"]).data.metrics
    for key in ("test/top1", "test/top5", "train/loss", "lr"):
        assert run.data.metrics[key] == pytest.approx(ref[key], rel=1e-6), key


@pytest.mark.timeout(420, method="thread")
def test_sigterm_driver_marks_killed_and_resume_finishes_the_same_run(mlflow_server, reference_teacher, workspace):
    client = MlflowClient(mlflow_server)
    name = "teacher-sigterm"
    path = write_config(workspace / "sigterm.yaml", teacher_config(workspace, name))
    driver = start_cli("teacher", str(path), "--tracking-uri", mlflow_server, cwd=workspace,
                       log=workspace / "sigterm-1.log")
    try:
        run_id = wait_for(lambda: run_by_name(client, name), 180, "the run")[0].info.run_id
        wait_for(lambda: 1 in R.logged_epochs(client, run_id), 180, "epoch 1 in MLflow", interval=0.1)
        cluster = descendants(driver.pid)  # the local Ray instance this driver started
        driver.send_signal(signal.SIGTERM)
        code = driver.wait(timeout=90)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    log = (workspace / "sigterm-1.log").read_text()
    assert code == 143, log[-3000:]  # SIGTERM: an interrupt, exit 143 (issue 27)
    assert f"run {name} killed" in log
    assert sum("epoch 1/2" in line for line in log.splitlines()) == 1  # each epoch line once in the driver log
    assert len(cluster) >= 3, cluster  # gcs_server, raylet, workers...
    deadline = time.monotonic() + 30
    while any(alive(p) for p in cluster) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in cluster if alive(p)], "the driver's Ray processes outlived it"

    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert R.logged_epochs(client, run_id) == {1}
    latest = latest_checkpoint(workspace, name)  # what --resume continues from
    assert read_meta(latest)["epoch"] == 1
    state = load_train_state(latest)
    assert state["epoch"] == 1 and {"optimizer", "scheduler", "rng", "models"} <= set(state)
    assert load_tensor_file(latest / "model.pt").keys() == state["models"]["model"].keys()

    resumed = start_cli("teacher", str(path), "--tracking-uri", mlflow_server, "--resume", cwd=workspace,
                        log=workspace / "sigterm-2.log")
    try:
        code = resumed.wait(timeout=240)
    finally:
        if resumed.poll() is None:
            resumed.kill()
            resumed.wait()
    log = (workspace / "sigterm-2.log").read_text()
    assert code == 0, log[-3000:]
    assert [r.info.run_id for r in run_by_name(client, name)] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[RESUMED_TAG] == "2"
    assert_one_value_per_epoch(client, run_id, teacher_metrics())
    assert_same_weights(final_weights(workspace, name), final_weights(workspace, "teacher-ref"))
    assert sum("epoch 2/2" in line for line in log.splitlines()) == 1  # each epoch line once in the driver log


@pytest.mark.timeout(300, method="thread")
def test_each_worker_environment_names_its_rank_in_the_torch_process_group(ray_cluster, workspace, tmp_path,
                                                                           monkeypatch):
    """A job's two workers (the trainer ``build_trainer`` makes) each see ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` equal
    to their Train context and to torch.distributed's group: libraries that read the environment (``env://``, data
    samplers) agree with the group the job trains in. The train function is replaced by one that writes what it
    sees; everything else is the job's own trainer."""
    import json

    from hsakd_ray.train import worker

    out = str(tmp_path)

    def what_each_worker_sees(config: dict) -> None:
        import torch.distributed as dist

        ctx = ray.train.get_context()
        seen = {"env": [os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")],
                "context": [str(ctx.get_world_rank()), str(ctx.get_world_size()), str(ctx.get_local_rank())],
                "group": [str(dist.get_rank()), str(dist.get_world_size()), "-"], "backend": dist.get_backend()}
        Path(out, f"rank{ctx.get_world_rank()}.json").write_text(json.dumps(seen))

    monkeypatch.setattr(worker, "train_loop_per_worker", what_each_worker_sees)
    cfg = config_from_dict(tiny_config(ray={"storage_path": str(workspace / "ray_results")}))
    assert cfg.scaling.num_workers == 2
    build_trainer(Job(cfg, "teacher", "rank-environment", str(workspace / "ray_results"))).fit()
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, got in enumerate(seen):
        assert got["env"] == got["context"], got
        assert got["env"][:2] == [str(rank), "2"] and got["group"][:2] == got["env"][:2], got
        assert got["backend"] == "gloo"


@pytest.mark.timeout(120, method="thread")
def test_a_job_the_running_cluster_can_never_fit_is_refused_once_joined(ray_cluster, workspace, sqlite_uri):
    """Issue 11.1 on a Ray that is already up (2 CPUs, no autoscaler): refused in one line, no run created,
    instead of a worker group that waits for a placement that never comes."""
    from hsakd_ray.errors import ClusterError
    from hsakd_ray.train.ray_session import check_cluster_resources

    with pytest.raises(ClusterError, match=r"needs 3 CPUs \(1 worker x 3\) but the cluster has 2"):
        check_cluster_resources({"CPU": 3.0}, 1, "a job")
    check_cluster_resources({"CPU": 1.0}, 2, "a job")  # fits: no error
    cfg = load_config(write_config(workspace / "huge.yaml", teacher_config(workspace, "teacher-huge")))
    cfg.scaling.cpus_per_worker = 3.0
    with pytest.raises(ClusterError, match=r"scaling: the teacher job needs 6 CPUs \(2 workers x 3\) but the cluster"):
        run_ray_job(cfg, "teacher", tracking_uri=sqlite_uri)
    assert not run_by_name(MlflowClient(sqlite_uri), "teacher-huge")


@pytest.mark.timeout(300, method="thread")
def test_a_job_whose_workers_fail_is_failed_with_the_error(ray_cluster, workspace, sqlite_uri):
    """Images that cannot be decoded fail the worker in its first epoch; with ``ray.max_failures: 0`` the job stops,
    its run is FAILED with the worker's exception as tag ``error``, and the error reaches the caller."""
    from PIL import Image

    root = workspace / "undecodable"
    for split in ("train", "val"):
        for label in ("ant", "bee"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                if split == "train":
                    (folder / f"{i}.png").write_bytes(b"not an image")
                else:
                    Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(folder / f"{i}.png")
    path = write_config(workspace / "failing.yaml", tiny_config(
        data={"name": "imagefolder", "root": str(root), "image_size": 16},
        train={"epochs": 1, "batch_size": 4, "output_dir": str(workspace / "outputs")},
        ray={"storage_path": str(workspace / "ray_results"), "max_failures": 0},
        tracking={"experiment": "train-ray", "run_name": "teacher-failing"},
    ))
    with pytest.raises(Exception) as info:
        run_ray_job(load_config(path), "teacher", config_path=str(path), tracking_uri=sqlite_uri)
    client = MlflowClient(sqlite_uri)
    (run,) = run_by_name(client, "teacher-failing")
    print("error tag:", run.data.tags.get("error"))
    assert run.info.status == "FAILED"
    assert "UnidentifiedImageError" in run.data.tags["error"] or "cannot identify image" in run.data.tags["error"]
    assert type(info.value).__name__ in run.data.tags["error"]
