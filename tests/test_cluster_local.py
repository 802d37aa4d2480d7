"""``hsakd-ray cluster up|down|status`` and a sweep on a real 2-node local Ray cluster (1 CPU per node, separate
``ray start`` processes, token auth on) tracked by a real ``mlflow server`` over HTTP.

Everything runs through the CLI as a user would: ``cluster up`` prints the driver's environment, ``tune`` joins the
cluster with it, MLflow is read back through ``MlflowClient`` over HTTP, and ``cluster down`` must leave no process
of the cluster behind.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import BIN
from mlflow.tracking import MlflowClient

from hsakd_ray.cluster.local import read_state, running_pids

pytestmark = pytest.mark.slow

EXPERIMENT = "cluster-local"

# Two trials at once, one Train worker each, 0.9 CPU per worker: a 1-CPU node holds one worker (plus the 0.05 CPU
# trial driver), so two concurrent trials run on two different nodes.
TINY_SPACE = {
    "base": {
        "data": {"name": "digits", "image_size": 16, "val_fraction": 0.1},
        "teacher": {"arch": "resnet8"},
        "student": {"arch": "resnet8"},
        "distill": {"method": "hsakd"},
        "optim": {"lr": 0.05, "schedule": "cosine", "milestones": []},
        "train": {"epochs": 1, "batch_size": 64, "seed": 0},
        "tracking": {"experiment": EXPERIMENT},
    },
    "teacher": {"config": {"teacher": {"arch": "resnet8", "aux_stages": "all"},
                           "scaling": {"num_workers": 1, "cpus_per_worker": 0.9}}},
    "search": {"distill.temperature": {"choice": [2.0, 4.0]}},
    "tune": {"num_samples": 2, "scheduler": {"type": "fifo"},
             "resources": {"num_workers": 1, "cpus_per_worker": 0.9}, "final": {"run": False}},
}


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hsakd-ray"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def exports(stdout: str) -> dict[str, str]:
    return dict(line[len("export "):].split("=", 1) for line in stdout.splitlines() if line.startswith("export "))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``cluster up --nodes 2 --cpus-per-node 1``: (its dir, the driver environment it printed)."""
    root = tmp_path_factory.mktemp("cluster")
    up = cli("cluster", "up", "--dir", str(root / "c"), "--nodes", "2", "--cpus-per-node", "1", cwd=root)
    assert up.returncode == 0, up.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"} | exports(up.stdout)
    yield root, env
    if (root / "c" / "cluster.json").exists():  # a test failed before test_down_leaves_no_process_behind
        cli("cluster", "down", "--dir", str(root / "c"), cwd=root)


@pytest.fixture(scope="module")
def sweep(cluster):
    """The tiny sweep, run once against the cluster: (completed process, MLflow client)."""
    root, env = cluster
    space = root / "tiny.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    state = read_state(root / "c")
    result = cli("tune", str(space), "--address", env["RAY_ADDRESS"], "--tracking-uri", env["MLFLOW_TRACKING_URI"],
                 "--set", f"ray.storage_path={state.storage_path}", cwd=root, env=env, timeout=420)
    return result, MlflowClient(env["MLFLOW_TRACKING_URI"])


def node_ids(root: Path, env: dict) -> dict[str, str]:
    """node label (node_0, node_1) -> node id prefix, from ``cluster status``."""
    status = cli("cluster", "status", "--dir", str(root / "c"), cwd=root)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = [line.split() for line in status.stdout.splitlines() if line.startswith("  node_")]
    return {row[0]: row[3] for row in rows}


def test_up_prints_a_tracking_server_and_a_two_node_address(cluster):
    root, env = cluster
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert env["RAY_AUTH_MODE"] == "token" and Path(env["RAY_AUTH_TOKEN_PATH"]).stat().st_mode & 0o077 == 0
    state = read_state(root / "c")
    assert [n.name for n in state.nodes] == ["node_0", "node_1"]
    assert all(n.pids for n in state.nodes) and state.mlflow_pids
    assert (Path(state.storage_path) / ".hsakd-shared").exists()


def test_status_lists_every_node_alive(cluster):
    root, env = cluster
    status = cli("cluster", "status", "--dir", str(root / "c"), cwd=root)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1:3] for line in status.stdout.splitlines() if line.startswith("  node_")}
    assert rows == {"node_0": ["head", "alive"], "node_1": ["worker", "alive"]}


def test_second_up_in_the_same_dir_is_refused(cluster):
    root, _ = cluster
    again = cli("cluster", "up", "--dir", str(root / "c"), cwd=root)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "already up" in again.stderr


def test_sweep_finishes(sweep):
    result, client = sweep
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "best config:" in result.stdout
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`hsakd.kind` = 'tune'")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hsakd.kind` = 'trial'")
    assert parent.info.status == "FINISHED"
    # one epoch: the last value is the only one; the named best trial holds the highest (ties allowed)
    (chosen,) = [t for t in trials if t.data.tags["hsakd.trial_id"] == parent.data.tags["best_trial_id"]]
    assert chosen.data.metrics["val/top1"] == max(t.data.metrics["val/top1"] for t in trials)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}  # over HTTP, from the server's store
    assert {"best_config.yaml", "trials.csv"} <= artifacts


def test_trials_ran_on_both_nodes(cluster, sweep):
    root, env = cluster
    _, client = sweep
    experiment = client.get_experiment_by_name(EXPERIMENT)
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`hsakd.kind` = 'trial'")
    assert len(trials) == TINY_SPACE["tune"]["num_samples"]
    nodes = node_ids(root, env)
    used = {label for run in trials for label, prefix in nodes.items()
            if run.data.tags.get("ray.node_id", "").startswith(prefix)}
    assert used == {"node_0", "node_1"}, [run.data.tags.get("ray.node_id") for run in trials]


def test_every_run_is_complete(sweep):
    _, client = sweep
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    kinds = sorted(run.data.tags.get("hsakd.kind") for run in runs)
    assert kinds == ["teacher", "teacher", "trial", "trial", "tune"]  # the tuning teacher and the final run's
    for run in runs:  # FIFO stops no trial early: every run finishes
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status, run.data.tags.get("error"))
        assert "stopped_by" not in run.data.tags
    for trial in (r for r in runs if r.data.tags.get("hsakd.kind") == "trial"):
        steps = [m.step for m in client.get_metric_history(trial.info.run_id, "val/top1")]
        assert steps == [1] and "test/top1" not in trial.data.metrics


def test_sqlite_tracking_uri_is_refused_on_two_nodes(cluster, tmp_path):
    root, env = cluster
    space = tmp_path / "refused.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE | {"tune": TINY_SPACE["tune"] | {"name": "refused-sqlite"}}))
    state = read_state(root / "c")
    result = cli("tune", str(space), "--address", env["RAY_ADDRESS"], "--tracking-uri",
                 f"sqlite:///{tmp_path / 'mlflow.db'}", "--set", f"ray.storage_path={state.storage_path}",
                 cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("hsakd-ray: error: tracking URI 'sqlite:") and "2 nodes" in error


def test_node_local_storage_is_refused_on_two_nodes(cluster, tmp_path):
    root, env = cluster
    space = tmp_path / "refused.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE | {"tune": TINY_SPACE["tune"] | {"name": "refused-storage"}}))
    result = cli("tune", str(space), "--address", env["RAY_ADDRESS"], "--tracking-uri", env["MLFLOW_TRACKING_URI"],
                 "--set", f"ray.storage_path={tmp_path / 'node-local'}", cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("hsakd-ray: error: ray.storage_path") and "local directory" in error
    assert ".hsakd-shared" in error


def test_down_leaves_no_process_behind(cluster):
    root, _ = cluster
    state = read_state(root / "c")
    assert running_pids(state)
    down = cli("cluster", "down", "--dir", str(root / "c"), cwd=root)
    assert down.returncode == 0, down.stderr[-2000:]
    assert running_pids(state) == {}  # by the cluster's mark: raylets, GCS, agents, workers, MLflow
    assert not (root / "c" / "cluster.json").exists()
