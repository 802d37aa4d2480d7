"""``hsakd-ray tune`` with shared teacher outputs on a real local Ray cluster and sqlite MLflow store: DDP trials
(2 workers, each rank its own stream and files), later trials read the first trial's teacher outputs (head placements
differ) on every rank, and the sweep's MLflow runs say how much."""
from __future__ import annotations

import pytest
import yaml
from conftest import server_pids, start_cli, wait_for_no_processes
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow


def test_a_sweep_shares_teacher_outputs_and_mlflow_says_how_much(tmp_path):
    raw = {
        "base": {"data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
                 "teacher": {"arch": "resnet8"}, "student": {"arch": "resnet8"},
                 "optim": {"lr": 0.05, "schedule": "constant", "milestones": []},
                 "train": {"epochs": 2, "batch_size": 64}, "tracking": {"experiment": "shared"}},
        "teacher": {"config": {"teacher": {"arch": "resnet8", "aux_stages": "all"}, "train": {"epochs": 1},
                               "scaling": {"num_workers": 1, "cpus_per_worker": 2}}},
        "search": {"student.aux_stages": {"grid": [[1, 2, 3], [3]]}},
        "tune": {"name": "shared", "max_concurrent_trials": 1, "search_alg": "grid",
                 # 2 DDP workers: with the trial's driver (0.05 CPU) they fit 2 CPUs under 1 CPU each
                 "resources": {"num_workers": 2, "cpus_per_worker": 0.9}, "final": {"run": False}},
    }
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(raw))
    proc = start_cli("tune", str(space), cwd=tmp_path, log=tmp_path / "log.txt")
    proc.wait(timeout=840)
    log = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "teacher outputs: shared by the trials" in log and "teacher outputs shared:" in log

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("shared")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`hsakd.kind` = 'tune'")
    trials = client.search_runs([exp.experiment_id], "tags.`hsakd.kind` = 'trial'")
    assert len(trials) == 2
    fractions = sorted(float(t.data.tags["teacher_cache.hit_fraction"]) for t in trials)
    assert fractions == [0.0, 1.0]  # one trial computed, the other (another head placement) read every batch
    assert sorted(t.data.tags["teacher_cache.shared"] for t in trials) == ["computed", "read"]
    for t in trials:
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "teacher_cache/hit_fraction")]
        assert steps == [1, 2]
    assert parent.data.metrics["teacher_cache/hit_fraction"] == pytest.approx(0.5)
    assert parent.data.tags["teacher_cache.summary"].startswith("1 of 2 trials read shared teacher outputs")
    store = list((tmp_path / "ray_results" / "shared-teacher-outputs").rglob("*.pt"))  # STREAM/EPOCH/RANK-STEP.pt
    streams: dict[str, set[str]] = {}
    for f in store:
        streams.setdefault(f.name.split("-")[0], set()).add(f.parent.parent.name)
    assert set(streams) == {"0", "1"} and all(len(s) == 1 for s in streams.values())
    assert streams["0"] != streams["1"]  # each rank its own stream (its own shard of the batches) and files
    (reader,) = [t for t in trials if t.data.tags["teacher_cache.shared"] == "read"]
    # rank 0 reports the hit fraction; rank 1 read too: a batch computed by the second trial would be published
    # again (a newer file), and every file is older than that trial
    assert max(f.stat().st_mtime for f in store) < reader.info.start_time / 1000
    assert not wait_for_no_processes(exclude=server_pids()), "the experiment left processes behind"
