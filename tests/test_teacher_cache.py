"""Shared teacher outputs (engine/teacher_cache.py): trials read what they would have computed, the store's writes
are atomic, claims exclude each other across processes, the budget bounds it, and a broken store only costs time."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from hsakd_ray.config import Config, ConfigError, apply_overrides, config_from_dict
from hsakd_ray.data.transforms import RandomCropFlip
from hsakd_ray.engine import Runtime, run_job
from hsakd_ray.engine.batches import DeviceBatches
from hsakd_ray.engine.reporting import LocalReporter
from hsakd_ray.engine.teacher_cache import (
    WARNING_KEY,
    StoreSettings,
    TeacherOutputs,
    TeacherStore,
    device_kind,
    fingerprint,
    stream_key,
    stream_parts,
)
from hsakd_ray.models import build_model
from hsakd_ray.tune.sharing import sharing_settings
from hsakd_ray.tune.space import load_space

torch.set_num_threads(1)

TINY = {
    "data": {"name": "synthetic", "image_size": 16, "synthetic_train_size": 64, "synthetic_test_size": 32,
             "synthetic_classes": 4},
    "teacher": {"arch": "resnet8"},
    "student": {"arch": "resnet8"},
    "optim": {"schedule": "constant", "milestones": []},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


def tiny(*overrides: str) -> Config:
    return config_from_dict(apply_overrides(TINY, list(overrides)))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("teacher")
    cfg = tiny("train.epochs=1")
    run_job(cfg, "teacher", Runtime(report=LocalReporter(run_dir, 1, printer=lambda line: None)))
    return run_dir / "latest"


# ---------------------------------------------------------------- the data stream

def test_device_batches_do_not_depend_on_the_global_rng():
    """Model init consumes the global RNG differently per trial (arch, head placement); crops must not follow it."""
    images, labels = torch.randn(32, 3, 8, 8), torch.arange(32) % 4
    augment = RandomCropFlip(2, flip=True, fill=(0.0, 0.0, 0.0))
    seen = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        batches = DeviceBatches(images, labels, 8, torch.device("cpu"), augment=augment, seed=3)
        batches.set_epoch(2)
        seen.append(torch.cat([x for x, _ in batches]))
    assert torch.equal(seen[0], seen[1])
    batches.set_epoch(3)
    assert not torch.equal(torch.cat([x for x, _ in batches]), seen[1])  # still a new draw each epoch


# ---------------------------------------------------------------- exactness

def run_trial(cfg: Config, store: dict | None) -> list[dict]:
    epochs: list[dict] = []
    run_job(cfg, "distill", Runtime(report=lambda epoch, metrics, save: epochs.append(metrics), teacher_store=store))
    return epochs


TRIALS = [  # hyperparameters a sweep searches: loss weights, the student's arch and head placement share one stream
    ("distill.temperature=3.0", "student.aux_stages=[3]"),
    ("distill.temperature=5.0", "distill.alpha=0.5", "student.arch=resnet14", "optim.lr=0.02",
     "student.aux_stages=[1,2]"),
    ("train.seed=7",),  # another stream: its own batches
    ("train.device_data=false", "distill.temperature=2.0"),  # DataLoader batches, host-side augmentation
    ("train.device_data=false", "distill.temperature=4.0", "student.arch=resnet14"),
]


def test_trials_sharing_teacher_outputs_train_exactly_as_alone(teacher_dir, tmp_path):
    """Tolerance: none needed on one machine with fp32 storage; losses and accuracies are compared to 1e-6 relative
    (the stored tensors are the computed ones, bit for bit)."""
    settings = {"root": str(tmp_path / "store")}
    alone, shared = [], []
    for overrides in TRIALS:
        cfg = tiny(*overrides, f"teacher.checkpoint={teacher_dir}")
        alone.append(run_trial(cfg, None))
        shared.append(run_trial(cfg, settings))
    keys = [k for k in alone[0][0] if k.startswith(("train/", "test/"))]
    assert "train/loss" in keys and "test/top1" in keys
    for a_trial, s_trial in zip(alone, shared, strict=True):
        for a, s in zip(a_trial, s_trial, strict=True):
            for k in keys:
                assert s[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k
    fractions = [[e["teacher_cache/hit_fraction"] for e in trial] for trial in shared]
    # first computes, second reads, third differs; the DataLoader pair: one computes, the other reads
    assert fractions == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    assert shared[1][-1]["teacher_cache/hits_total"] == shared[1][-1]["teacher_cache/steps_total"] == 8


# ---------------------------------------------------------------- the store

def outputs(seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 4, generator=g), [torch.randn(8, 16, generator=g) for _ in range(2)]


def store(tmp_path: Path, **kw) -> TeacherStore:
    return TeacherStore(StoreSettings(root=str(tmp_path / "store"), **kw), "stream")


def test_publish_is_atomic_and_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    s = store(tmp_path)
    assert s.publish(1, 0, "fp", outputs(0))
    logits, aux = s.read(1, 0, "fp")
    assert torch.equal(logits, outputs(0)[0]) and all(map(torch.equal, aux, outputs(0)[1]))
    assert s.read(1, 0, "another batch") is None

    def broken_save(obj, f):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    assert not s.publish(1, 0, "fp", outputs(1))  # fails, says so once, never raises
    assert torch.equal(s.read(1, 0, "fp")[0], outputs(0)[0])  # the previous file, whole
    assert sorted(p.name for p in s.path(1, 0).parent.iterdir()) == ["0-000000.pt"]  # no temp debris


def test_bfloat16_storage_halves_the_bytes_within_its_stated_tolerance(tmp_path):
    exact, half = store(tmp_path / "a"), store(tmp_path / "b", dtype="bfloat16")
    big = torch.randn(256, 100), [torch.randn(256, 400) for _ in range(3)]  # a CIFAR-100 batch's size
    for s in (exact, half):
        assert s.publish(1, 0, "fp", big)
    assert half.path(1, 0).stat().st_size < 0.55 * exact.path(1, 0).stat().st_size
    logits, aux = half.read(1, 0, "fp")
    assert logits.dtype == torch.float32
    for got, want in zip([logits, *aux], [big[0], *big[1]], strict=True):
        torch.testing.assert_close(got, want, rtol=2**-8, atol=0)  # docs/tuning.md: relative error < 0.4 %


CLAIM = """
import sys, time
from hsakd_ray.engine.teacher_cache import StoreSettings, TeacherStore
s = TeacherStore(StoreSettings(root=sys.argv[1]), "stream")
start = float(sys.argv[2])
while time.time() < start:
    pass
print(s.claim(1, 0))
"""


def test_two_processes_never_both_claim_a_batch(tmp_path):
    start = time.time() + 8.0  # both are imported and spinning by then, on a loaded machine too
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path / "store"), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    won = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert won == ["False", "True"]


def test_a_stale_claim_is_taken_over_and_a_live_one_waited_for(tmp_path):
    s = store(tmp_path, stale_s=60)
    assert s.claim(1, 0) and not s.claim(1, 0)
    old = time.time() - 120
    os.utime(s.path(1, 0, ".claim"), (old, old))
    assert s.claim(1, 0)  # its owner is gone

    x = torch.zeros(2)
    assert s.claim(2, 0)  # another trial computes this batch, publishing it 0.3 s from now
    threading.Timer(0.3, lambda: (s.publish(2, 0, fingerprint(x), outputs(2)), s.release(2, 0))).start()
    provider = TeacherOutputs(TeacherStore(s.settings, "stream"), torch.device("cpu"))
    provider.start_epoch(2)
    got = provider.outputs(x, lambda _: pytest.fail("computed although another trial was computing it"))
    assert torch.equal(got[0], outputs(2)[0]) and provider.counts == {"hits": 1, "computed": 0, "waited": 1}
    metrics = provider.epoch_metrics()  # the wait is reported as such, apart from sharing's own (tiny) cost
    assert metrics["teacher_cache/wait_seconds"] >= 0.25
    assert 0 < metrics["teacher_cache/store_seconds"] < metrics["teacher_cache/wait_seconds"]


def test_a_full_budget_stops_storing_and_trials_still_get_their_outputs(tmp_path):
    warnings: list[str] = []
    one_file = 8 * 4 * 4 + 2 * 8 * 16 * 4 + 1024
    s = TeacherStore(StoreSettings(root=str(tmp_path / "store"), budget_bytes=int(2.5 * one_file)), "stream",
                     warn=warnings.append)
    provider = TeacherOutputs(s, torch.device("cpu"))
    for epoch in (1, 2):
        provider.start_epoch(epoch)
        for step in range(2):
            x = torch.full((2,), float(10 * epoch + step))
            got = provider.outputs(x, lambda x: outputs(int(x[0])))
            assert torch.equal(got[0], outputs(10 * epoch + step)[0])
    stored = sorted(str(p.relative_to(s.dir)) for p in s.dir.rglob("*.pt"))
    assert stored == ["00001/0-000000.pt", "00001/0-000001.pt"]  # the first epoch kept, the rest computed
    assert len(warnings) == 1 and "budget" in warnings[0]


def test_a_corrupt_file_is_recomputed_replaced_and_reported_once(tmp_path):
    warnings: list[str] = []
    s = TeacherStore(StoreSettings(root=str(tmp_path / "store")), "stream", warn=warnings.append)
    x = torch.arange(6.0)
    s.path(1, 0).parent.mkdir(parents=True)
    s.path(1, 0).write_bytes(b"not a torch file")
    provider = TeacherOutputs(s, torch.device("cpu"))
    provider.start_epoch(1)
    got = provider.outputs(x, lambda _: outputs(5))
    assert torch.equal(got[0], outputs(5)[0]) and provider.counts["computed"] == 1
    assert torch.equal(s.read(1, 0, fingerprint(x))[0], outputs(5)[0])  # replaced by a good file
    assert len(warnings) == 1 and "unreadable" in warnings[0]


def test_an_unwritable_store_falls_back_to_computing(tmp_path):
    warnings: list[str] = []
    root = tmp_path / "store"
    root.write_text("a file where the store's directory should be")
    provider = TeacherOutputs(TeacherStore(StoreSettings(root=str(root)), "stream", warn=warnings.append),
                              torch.device("cpu"))
    for epoch in (1, 2):
        provider.start_epoch(epoch)
        assert torch.equal(provider.outputs(torch.zeros(1), lambda _: outputs(3))[0], outputs(3)[0])
    assert len(warnings) == 1 and "cannot write" in warnings[0]


# ---------------------------------------------------------------- tune.share_teacher

def space_file(tmp_path: Path, **tune) -> Path:
    raw = {"base": {"data": {"name": "digits", "image_size": 16}, "teacher": {"arch": "resnet8"},
                    "student": {"arch": "resnet8"}, "distill": {"method": tune.pop("method", "hsakd")}},
           "teacher": {"config": {"train": {"epochs": 1}}},
           "search": {"distill.temperature": {"grid": [2.0, 4.0]}},
           "tune": {"name": "s", "search_alg": "grid", **tune}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_share_teacher_is_on_for_cpu_sweeps_of_teacher_methods_and_off_otherwise(tmp_path):
    storage = str(tmp_path / "ray_results")
    on = sharing_settings(load_space(space_file(tmp_path)), storage)
    assert on["root"] == str(tmp_path / "ray_results" / "s-teacher-outputs") and on["dtype"] == "float32"
    assert sharing_settings(load_space(space_file(tmp_path, share_teacher=False)), storage) is None
    assert sharing_settings(load_space(space_file(tmp_path, method="ce")), storage) is None
    gpu = space_file(tmp_path, resources={"num_workers": 1, "gpus_per_worker": 1})
    assert sharing_settings(load_space(gpu), storage) is None
    assert sharing_settings(load_space(space_file(tmp_path, resources={"num_workers": 1, "gpus_per_worker": 1},
                                                  share_teacher=True)), storage) is not None
    assert sharing_settings(load_space(space_file(tmp_path)), "s3://bucket/runs") is None
    assert sharing_settings(load_space(space_file(tmp_path, teacher_store_gb=0.5, teacher_store_dtype="bfloat16")),
                            storage)["budget_bytes"] == 2**29


@pytest.mark.parametrize("key,value", [("share_teacher", "sometimes"), ("teacher_store_gb", -1),
                                       ("teacher_store_dtype", "float16")])
def test_bad_sharing_settings_are_refused_naming_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=f"tune.{key}"):
        load_space(space_file(tmp_path, **{key: value}))


def test_a_claim_that_ends_without_a_file_stops_the_waiting_for_the_epoch(tmp_path):
    """Past the budget the claimer stores nothing: a trial waiting on its claims would pay twice per batch."""
    s = store(tmp_path)
    x0, x1 = torch.zeros(1), torch.ones(1)
    assert s.claim(1, 0) and s.claim(1, 1)
    threading.Timer(0.3, lambda: s.release(1, 0)).start()  # computed, not stored
    provider = TeacherOutputs(TeacherStore(s.settings, "stream"), torch.device("cpu"))
    provider.start_epoch(1)
    provider.outputs(x0, lambda _: outputs(0))
    start = time.monotonic()
    provider.outputs(x1, lambda _: outputs(1))  # step 1 is claimed too, but not waited for
    assert time.monotonic() - start < 1.0 and provider.counts == {"hits": 0, "computed": 2, "waited": 1}


def _claim_and_hang(root: str, ready) -> None:
    s = TeacherStore(StoreSettings(root=root), "stream")
    ready.put(s.claim(1, 0) and s.claim(1, 1))
    time.sleep(600)  # killed by the test, as ASHA's stop or PBT's exploit kills a Train worker mid-batch


def test_a_killed_trials_claims_are_taken_over_at_once(tmp_path):
    """A trial stopped mid-batch (ASHA, PBT exploit, a killed driver) leaves claims behind; another trial waiting on
    one computes it as soon as the owner's process is gone, not after ``wait_s``, and keeps waiting on live claims."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    ready = ctx.Queue()
    owner = ctx.Process(target=_claim_and_hang, args=(str(tmp_path / "store"), ready))
    owner.start()
    assert ready.get(timeout=60) is True
    s = store(tmp_path, wait_s=60.0, stale_s=300.0)
    assert not s.claim(1, 0)  # a live owner's claim is respected
    threading.Timer(0.5, owner.kill).start()
    provider = TeacherOutputs(TeacherStore(s.settings, "stream"), torch.device("cpu"))
    provider.start_epoch(1)
    start = time.monotonic()
    got = provider.outputs(torch.zeros(1), lambda _: outputs(0))  # waits on the claim until the owner dies
    assert time.monotonic() - start < 10.0
    assert torch.equal(got[0], outputs(0)[0]) and provider.counts == {"hits": 0, "computed": 1, "waited": 1}
    owner.join(timeout=30)
    assert provider.store.claim(1, 1)  # the dead owner's other claim: taken over without waiting
    provider.store.release(1, 1)
    assert torch.equal(provider.store.read(1, 0, fingerprint(torch.zeros(1)))[0], outputs(0)[0])  # and published
    assert not provider.store.path(1, 0, ".claim").exists()
    assert provider._waits_pay  # a dead owner is no reason to stop waiting on live ones


# ---------------------------------------------------------------- what MLflow says, across --resume

def test_after_resume_the_sweeps_sharing_summary_counts_trials_reported_before_the_kill(tmp_path):
    """A killed driver never writes the summary; the resumed one sees only the trials it runs. The summary and each
    trial's tag still count every epoch its MLflow run holds (real sqlite store, no Ray)."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from hsakd_ray.tracking import runs as R
    from hsakd_ray.tune.mlflow_logger import TRIAL_TAG, MLflowTrialLogger

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("s")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    space = load_space(space_file(tmp_path))

    def trial(trial_id: str) -> Trial:
        return Trial("run_trial", config={"params": {"distill.temperature": 2.0}}, trial_id=trial_id, stub=True)

    def report(logger: MLflowTrialLogger, t: Trial, epoch: int, hits: float) -> None:
        logger.on_trial_result(0, [], t, {"epoch": epoch, "val/top1": 50.0, "config": t.config,
                                          "teacher_cache/hits": hits, "teacher_cache/computed": 4.0 - hits})

    computed, reader = trial("t_00000"), trial("t_00001")
    first = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials"))
    for epoch in (1, 2):
        report(first, computed, epoch, 0.0)
    first.on_trial_complete(0, [], computed)
    report(first, reader, 1, 4.0)  # then the driver is killed: no on_experiment_end

    resumed = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, space, str(tmp_path / "trials"))
    resumed.on_trial_start(0, [], reader)
    report(resumed, reader, 2, 2.0)
    resumed.on_trial_complete(0, [], reader)
    resumed.on_experiment_end([])

    tags = client.get_run(parent).data.tags
    assert tags["teacher_cache.summary"] == "1 of 2 trials read shared teacher outputs; 6 of 16 steps"
    assert client.get_run(parent).data.metrics["teacher_cache/hit_fraction"] == pytest.approx(6 / 16)
    runs = {r.data.tags[TRIAL_TAG]: r for r in client.search_runs([experiment_id], f"tags.`{R.PARENT_TAG}` = "
                                                                                   f"'{parent}'")}
    assert runs["t_00001"].data.tags["teacher_cache.hit_fraction"] == "0.750"  # both epochs, not only the last
    assert runs["t_00000"].data.tags["teacher_cache.shared"] == "computed"


# ---------------------------------------------------------------- the stream key (issue 26, planted bug 1)

def assert_trains_as_alone(shared: list[dict], alone: list[dict]) -> None:
    keys = [k for k in alone[0] if k.startswith(("train/", "test/"))]
    assert "train/loss" in keys and "test/top1" in keys
    for a, s in zip(alone, shared, strict=True):
        for k in keys:
            assert s[k] == pytest.approx(a[k], rel=1e-6, abs=1e-9), k


def test_stream_key_bug_precision_compile_mode_channels_last_and_device_kind_each_change_the_stream():
    """Guards against dropping from the stream key anything that changes the teacher's outputs: each of these
    alone gives another stream; the data loader's worker count, which changes no output, does not."""
    cfg, cpu = tiny(), torch.device("cpu")
    teacher = build_model("resnet8", 4, "all")

    def key(cfg: Config = cfg, device: torch.device = cpu, autocast=None, compiled: str = "eager") -> str:
        return stream_key(teacher, stream_parts(cfg, 0, 1, device, autocast, compiled))

    base = key()
    variants = {"precision bf16": key(autocast=torch.bfloat16),
                "compile default": key(compiled="default"), "compile max-autotune": key(compiled="max-autotune"),
                "channels_last off": key(tiny("train.channels_last=false")),
                "device cuda": key(device=torch.device("cuda"))}
    assert len({base, *variants.values()}) == 1 + len(variants), variants
    assert key(tiny("data.loader_workers=3")) == base


CPU_KEY = """
import torch
from hsakd_ray.config import apply_overrides, config_from_dict
from hsakd_ray.engine.teacher_cache import stream_key, stream_parts
cfg = config_from_dict(apply_overrides({"data": {"name": "synthetic"}}, []))
print(stream_key(torch.nn.Identity(), stream_parts(cfg, 0, 1, torch.device("cpu"), None)))
"""


def test_stream_key_bug_the_cpus_instruction_set_changes_the_stream():
    """Nodes whose CPUs dispatch to other kernels (AVX-512 vs AVX2 vs none) compute other teacher outputs: another
    stream. ``ATEN_CPU_CAPABILITY=default`` makes torch dispatch as a CPU without vector instructions would."""
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "NO AVX"):
        pytest.skip("this CPU has no vector instruction set for torch to dispatch to")
    here = stream_key(torch.nn.Identity(), stream_parts(config_from_dict({"data": {"name": "synthetic"}}), 0, 1,
                                                        torch.device("cpu"), None))
    lesser = subprocess.run([sys.executable, "-c", CPU_KEY], capture_output=True, text=True, check=True,
                            env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}).stdout.strip()
    assert len(lesser) == len(here) and lesser != here
    assert device_kind(torch.device("cpu")) == f"cpu {torch.backends.cpu.get_cpu_capability()}"


def test_stream_key_bug_trials_differing_only_in_precision_train_exactly_as_alone(teacher_dir, tmp_path):
    """An fp32 and a bf16 trial of one sweep: the bf16 trial must not read the fp32 trial's teacher outputs."""
    settings = {"root": str(tmp_path / "store")}
    for precision in ("fp32", "bf16"):
        cfg = tiny(f"train.precision={precision}", f"teacher.checkpoint={teacher_dir}")
        alone, shared = run_trial(cfg, None), run_trial(cfg, settings)
        assert [e["teacher_cache/hit_fraction"] for e in shared] == [0.0, 0.0], precision
        assert_trains_as_alone(shared, alone)


# ---------------------------------------------------------------- a pure hit (issue 26, low-harm survivor)

class RecordingStore(TeacherStore):
    """The real store, recording which of its files a trial reads and which batches it claims."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.reads: list[tuple[int, int]] = []
        self.claims: list[tuple[int, int]] = []

    def read(self, epoch: int, step: int, fp: str):
        self.reads.append((epoch, step))
        return super().read(epoch, step, fp)

    def claim(self, epoch: int, step: int) -> bool:
        self.claims.append((epoch, step))
        return super().claim(epoch, step)


def test_a_pure_store_hit_creates_no_claim_file_and_reads_one_file(tmp_path):
    writer = store(tmp_path)
    x = torch.arange(4.0)
    assert writer.publish(1, 0, fingerprint(x), outputs(1))
    reader = RecordingStore(writer.settings, "stream")
    provider = TeacherOutputs(reader, torch.device("cpu"))
    provider.start_epoch(1)
    got = provider.outputs(x, lambda _: pytest.fail("computed a stored batch"))
    assert torch.equal(got[0], outputs(1)[0]) and provider.counts == {"hits": 1, "computed": 0, "waited": 0}
    assert reader.reads == [(1, 0)] and reader.claims == []
    assert not list(reader.dir.rglob("*.claim"))


# ---------------------------------------------------------------- checksums (issue 27, case 7)

def overwrite_logits_in_place(path: Path, change) -> None:
    """Rewrite the stored logits' bytes inside the file, as a stray writer would: same size, still a loadable
    torch file, only the values differ."""
    data = path.read_bytes()
    blob = torch.load(io.BytesIO(data[data.index(b"PK"):]), weights_only=True)
    old = blob["logits"].contiguous().numpy().tobytes()
    assert data.count(old) == 1
    path.write_bytes(data.replace(old, change(blob["logits"]).contiguous().numpy().tobytes()))


def test_outputs_overwritten_in_place_are_recomputed_replaced_and_reported_once(tmp_path):
    warnings: list[str] = []
    s = TeacherStore(StoreSettings(root=str(tmp_path / "store")), "stream", warn=warnings.append)
    xs = [torch.full((3,), float(i)) for i in range(2)]
    for step, x in enumerate(xs):
        assert s.publish(1, step, fingerprint(x), outputs(step))
        overwrite_logits_in_place(s.path(1, step), lambda t: t + 1.0)
    provider = TeacherOutputs(s, torch.device("cpu"))
    provider.start_epoch(1)
    for step, x in enumerate(xs):
        got = provider.outputs(x, lambda _, step=step: outputs(step))
        assert torch.equal(got[0], outputs(step)[0])  # computed, never the changed values
        assert torch.equal(s.read(1, step, fingerprint(x))[0], outputs(step)[0])  # replaced by a good file
    assert provider.counts["computed"] == 2
    assert len(warnings) == 1 and "does not match its checksum" in warnings[0]
    assert provider.epoch_metrics()[WARNING_KEY] == warnings[0]


def test_a_trial_reading_a_tampered_store_trains_exactly_as_an_untampered_one(teacher_dir, tmp_path):
    """The probe's case: a store whose outputs were overwritten in place after the first trial wrote them. The
    second trial recomputes every changed batch, says so once in its reported metrics, and trains as alone."""
    settings = {"root": str(tmp_path / "store")}
    cfg = tiny(f"teacher.checkpoint={teacher_dir}")
    alone = run_trial(cfg, None)
    run_trial(cfg, settings)
    files = sorted(Path(settings["root"]).rglob("*.pt"))
    assert len(files) == 8
    for path in files[::2]:  # half the batches changed: the rest are still read
        overwrite_logits_in_place(path, lambda t: t.flip(-1))
    tampered = run_trial(cfg, settings)
    assert [e["teacher_cache/hit_fraction"] for e in tampered] == [0.5, 0.5]
    assert_trains_as_alone(tampered, alone)
    said = {e[WARNING_KEY] for e in tampered}  # every epoch's report carries the warnings so far: one
    assert len(said) == 1 and "does not match its checksum" in said.pop()
    assert WARNING_KEY not in run_trial(cfg, settings)[-1]  # recomputed files replaced the changed ones


def test_a_read_only_store_warning_reaches_the_reported_metrics(teacher_dir, tmp_path):
    root = tmp_path / "store"
    root.write_text("a file where the store's directory should be")
    epochs = run_trial(tiny(f"teacher.checkpoint={teacher_dir}"), {"root": str(root)})
    said = [e.get(WARNING_KEY, "") for e in epochs]
    assert said[0] == said[1] and said[0].count("teacher store:") == 1 and "cannot write" in said[0]


def test_store_warnings_are_printed_once_and_tagged_on_the_trials_run(tmp_path, capsys):
    """The driver side (real sqlite store, no Ray): each report repeats the warnings so far; the console shows each
    once, the trial's MLflow run holds them all as a tag, and no string becomes a metric."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from hsakd_ray.tune.mlflow_logger import STORE_WARNING_TAG, MLflowTrialLogger

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = client.create_experiment("s")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    logger = MLflowTrialLogger(client.tracking_uri, experiment_id, parent, load_space(space_file(tmp_path)),
                               str(tmp_path / "trials"))
    trial = Trial("run_trial", config={"params": {"distill.temperature": 2.0}}, trial_id="t_00000", stub=True)
    first = "teacher store: /s/00001/0-000003.pt does not match its checksum (changed after it was written)"
    second = "teacher store: cannot write under /s (disk full); this trial computes its own outputs"
    for epoch, said in [(1, first), (2, first), (3, f"{first}\n{second}")]:
        logger.on_trial_result(0, [], trial, {"epoch": epoch, "val/top1": 50.0, "config": trial.config,
                                              WARNING_KEY: said})
    printed = [line for line in capsys.readouterr().out.splitlines() if "teacher store" in line]
    assert printed == [f"trial t_00000: {first}", f"trial t_00000: {second}"]
    run = client.get_run(logger.run_ids["t_00000"])
    assert run.data.tags[STORE_WARNING_TAG] == f"{first}\n{second}"
    assert WARNING_KEY not in run.data.metrics
