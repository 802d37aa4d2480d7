"""A Ray cluster of several nodes on this machine, plus an MLflow tracking server: ``hsakd-ray cluster up|down|status``.

Each node is its own ``ray start`` (its own raylet, object store, CPU count and a custom resource ``node_<k>`` that
labels it); the head also runs the GCS and the dashboard (on 127.0.0.1). ``mlflow server`` listens on 127.0.0.1
with a sqlite backend and proxies artifacts to a local directory. Token authentication is on: a fresh token is
written to ``DIR/auth_token`` (mode 600) and every process gets ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH``; drivers need the same two variables (``up`` and ``status`` print them).

What ``up`` started is recorded in ``DIR/cluster.json`` (written atomically); ``down`` stops exactly those processes
(see ``processes``), never with ``ray stop``, which would stop every Ray cluster on the machine.

All nodes share this machine's filesystem, so ``DIR/storage`` is a shared ``ray.storage_path``; it holds the
``.hsakd-shared`` marker that declares it so (``check_cluster_paths`` refuses unmarked local paths on a multi-node
cluster).
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClusterError
from .processes import CLUSTER_MARK, alive, cluster_processes, stop_cluster_processes

STATE_FILE = "cluster.json"
NODE_MARK = "HSAKD_CLUSTER_NODE"
MAX_TEMP_DIR_CHARS = 36  # Ray puts unix sockets under TEMP/n<k>/session_<date>_<pid>/sockets: paths cap at 107


@dataclass
class NodeState:
    name: str                   # node_0 is the head
    num_cpus: int
    resource: str               # the custom resource that labels the node: {"node_<k>": 1}
    pids: list[int] = field(default_factory=list)
    log: str = ""


@dataclass
class ClusterState:
    cluster_id: str
    dir: str
    address: str                # GCS address, host:port
    dashboard_url: str
    tracking_uri: str
    storage_path: str
    token_path: str
    temp_dir: str               # one Ray temp dir per node below it (n0, n1, ...), as on separate machines
    owns_temp_dir: bool         # a short directory under /tmp (DIR was too long for Ray's socket paths)
    nodes: list[NodeState]
    mlflow_pids: list[int]
    started_at: float

    def driver_env(self) -> dict[str, str]:
        """What a driver (``hsakd-ray tune --address auto``, ``ray job submit``) needs to join this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": self.token_path,
                "RAY_API_SERVER_ADDRESS": self.dashboard_url, "MLFLOW_TRACKING_URI": self.tracking_uri}


# ---------------------------------------------------------------- state file

def state_path(directory: str | Path) -> Path:
    return Path(directory).expanduser().resolve() / STATE_FILE


def write_state(state: ClusterState) -> None:
    path = state_path(state.dir)
    fd, tmp = tempfile.mkstemp(prefix=".cluster-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(dataclasses.asdict(state), out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read_state(directory: str | Path) -> ClusterState:
    path = state_path(directory)
    if not path.exists():
        raise ClusterError(f"no local cluster recorded in {path.parent} (start one with: hsakd-ray cluster up "
                           f"--dir {path.parent})")
    raw = json.loads(path.read_text())
    raw["nodes"] = [NodeState(**n) for n in raw["nodes"]]
    return ClusterState(**raw)


def running_pids(state: ClusterState) -> dict[int, str]:
    return cluster_processes(state.cluster_id)


# ---------------------------------------------------------------- starting

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    """The ``ray`` / ``mlflow`` entry point of this Python environment (PATH may hold another one)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise ClusterError(f"{name!r} is not installed in {Path(sys.executable).parent} nor on PATH")
    return found


def process_env(cluster_id: str, token_path: Path, node: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI",
                                                              "HSAKD_RAY_DRIVER")}  # a driver's mark: not ours
    # jobs (`ray job submit -- hsakd-ray ...`) find this environment's python and entry points first
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), "RAY_USAGE_STATS_ENABLED": "0",
                CLUSTER_MARK: cluster_id, NODE_MARK: node})
    return env


def log_cause(path: Path) -> str:
    """The line of a log that says why a process failed: its last error line, else its last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["empty log"])[-1]


def check_port_free(port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise ClusterError(f"--mlflow-port {port}: 127.0.0.1:{port} is in use; pick another port") from None


def choose_temp_dir(root: Path, cluster_id: str) -> tuple[Path, bool]:
    inside = root / "ray"
    if len(str(inside)) <= MAX_TEMP_DIR_CHARS:
        return inside, False
    return Path(tempfile.gettempdir()) / f"hsakd-{cluster_id[:8]}", True


def node_temp_dir(temp_dir: Path, node: NodeState) -> Path:
    """Each node's own Ray temp dir: nodes sharing one would share runtime-env caches, and one node's cleanup of a
    job's working_dir would delete it under a driver running on another node."""
    return temp_dir / f"n{node.name.rsplit('_', 1)[1]}"


def ray_start_args(node: NodeState, temp_dir: Path, object_store_bytes: int, head_ports: dict | None,
                   address: str | None) -> list[str]:
    args = [executable("ray"), "start", f"--num-cpus={node.num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps({node.resource: 1})}", f"--temp-dir={node_temp_dir(temp_dir, node)}",
            f"--object-store-memory={object_store_bytes}", f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}", "--disable-usage-stats"]
    if head_ports is not None:
        return args + ["--head", f"--port={head_ports['gcs']}", "--include-dashboard=true",
                       "--dashboard-host=127.0.0.1", f"--dashboard-port={head_ports['dashboard']}",
                       f"--ray-client-server-port={head_ports['client']}"]
    return args + [f"--address={address}"]


def start_ray_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """``ray start`` (without --block) returns once its node has joined; its daemons outlive it."""
    with open(log, "wb") as out:  # this run's log only: errors are read back from it
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ray_start(process: subprocess.Popen, node: NodeState, timeout: float) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise ClusterError(f"ray start for {node.name} did not finish in {timeout:.0f} s; see {node.log}") from None
    if code != 0:
        raise ClusterError(f"ray start for {node.name} failed (exit {code}): {log_cause(Path(node.log))} "
                           f"(log: {node.log})")


def start_mlflow(root: Path, port: int, env: dict) -> subprocess.Popen:
    store = root / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    args = [executable("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
            "--artifacts-destination", str(store / "artifacts"), "--workers", "1"]
    with open(root / "logs" / "mlflow.log", "wb") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_mlflow(process: subprocess.Popen, uri: str, log: Path, timeout: float) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"mlflow server exited with code {process.returncode}: {log_cause(log)} (log: {log})")
        try:
            if requests.get(f"{uri}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise ClusterError(f"mlflow server at {uri} not healthy after {timeout:.0f} s; see {log}")


def write_token(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))


def mark_shared(storage: Path) -> None:
    from ..train.ray_session import SHARED_MARKER  # here: importing it imports ray, which down and status avoid

    storage.mkdir(parents=True, exist_ok=True)
    (storage / SHARED_MARKER).write_text(
        "Declares this directory shared by every node of the Ray cluster (all nodes of `hsakd-ray cluster up` run\n"
        "on one machine), so hsakd-ray accepts it as ray.storage_path on a multi-node cluster.\n")


def check_not_running(root: Path) -> None:
    if not state_path(root).exists():
        return
    previous = read_state(root)
    if running_pids(previous):
        raise ClusterError(f"a cluster is already up in {root} at {previous.address}: stop it first with "
                           f"hsakd-ray cluster down --dir {root}")


def up(directory: str | Path, nodes: int = 2, cpus_per_node: int = 1, mlflow_port: int | None = None,
       object_store_mb: int = 300, timeout: float = 180.0) -> ClusterState:
    """Start the head, ``nodes - 1`` worker nodes and the MLflow server; on any failure stop what was started."""
    if nodes < 1:
        raise ClusterError(f"--nodes must be at least 1, got {nodes}")
    if cpus_per_node < 1:
        raise ClusterError(f"--cpus-per-node must be at least 1, got {cpus_per_node}")
    if mlflow_port:
        check_port_free(mlflow_port)
    root = Path(directory).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    check_not_running(root)
    (root / "logs").mkdir(exist_ok=True)
    cluster_id = uuid.uuid4().hex[:12]
    token_path = root / "auth_token"
    write_token(token_path)
    temp_dir, owns_temp = choose_temp_dir(root, cluster_id)
    temp_dir.mkdir(parents=True, exist_ok=True)
    storage = root / "storage"
    mark_shared(storage)
    mlflow_port = mlflow_port or free_port()
    head_ports = {"gcs": free_port(), "dashboard": free_port(), "client": free_port()}
    node_states = [NodeState(f"node_{k}", cpus_per_node, f"node_{k}", log=str(root / "logs" / f"node_{k}.log"))
                   for k in range(nodes)]
    state = ClusterState(cluster_id, str(root), "", f"http://127.0.0.1:{head_ports['dashboard']}",
                         f"http://127.0.0.1:{mlflow_port}", str(storage), str(token_path), str(temp_dir), owns_temp,
                         node_states, [], time.time())
    object_store = object_store_mb * 1024 * 1024
    try:
        mlflow_env = process_env(cluster_id, token_path, "mlflow") | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        mlflow = start_mlflow(root, mlflow_port, mlflow_env)
        head = node_states[0]
        wait_ray_start(start_ray_node(ray_start_args(head, temp_dir, object_store, head_ports, None),
                                      process_env(cluster_id, token_path, head.name), Path(head.log)),
                       head, timeout)
        state.address = (node_temp_dir(temp_dir, head) / "ray_current_cluster").read_text().strip()
        starting = [(node, start_ray_node(ray_start_args(node, temp_dir, object_store, None, state.address),
                                          process_env(cluster_id, token_path, node.name), Path(node.log)))
                    for node in node_states[1:]]
        for node, process in starting:
            wait_ray_start(process, node, timeout)
        wait_mlflow(mlflow, state.tracking_uri, root / "logs" / "mlflow.log", timeout)
        record_pids(state)
        write_state(state)
    except BaseException:
        stop_cluster_processes(cluster_id)
        if owns_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return state


def record_pids(state: ClusterState) -> None:
    """Each process of the cluster, assigned to its node (or to MLflow) by the node mark in its environment."""
    by_mark: dict[str, list[int]] = {}
    for pid in running_pids(state):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        node = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(NODE_MARK.encode() + b"=")), "")
        by_mark.setdefault(node, []).append(pid)
    for node in state.nodes:
        node.pids = sorted(by_mark.get(node.name, []))
    state.mlflow_pids = sorted(by_mark.get("mlflow", []))


# ---------------------------------------------------------------- stopping and status

def down(directory: str | Path) -> int:
    """Stop every process of the recorded cluster; returns how many were running. Logs, the MLflow store and the
    shared storage stay in DIR; the state file is removed."""
    state = read_state(directory)
    running = running_pids(state)
    left = stop_cluster_processes(state.cluster_id)
    if left:
        raise ClusterError(f"{len(left)} processes of the cluster survived SIGKILL: {sorted(left)}")
    if state.owns_temp_dir:
        shutil.rmtree(state.temp_dir, ignore_errors=True)
    state_path(directory).unlink(missing_ok=True)
    return len(running)


_LIST_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(json.dumps(ray.nodes()))
"""


def live_nodes(state: ClusterState, timeout: float = 90.0) -> list[dict]:
    """The cluster's nodes as Ray's GCS sees them, asked by a short-lived driver holding the cluster's token (Ray
    reads RAY_AUTH_MODE when it is imported, so the driver is a separate process with the cluster's env)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env.update(state.driver_env())
    try:
        out = subprocess.run([sys.executable, "-c", _LIST_NODES, state.address], env=env, capture_output=True,
                             text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"the cluster at {state.address} did not answer in {timeout:.0f} s") from None
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ClusterError(f"the cluster at {state.address} does not answer: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_lines(state: ClusterState) -> list[str]:
    return [f"export {k}={v}" for k, v in state.driver_env().items()]


def describe_up(state: ClusterState) -> list[str]:
    """What ``up`` prints: comments, then ``export`` lines, so ``eval "$(hsakd-ray cluster up)"`` works."""
    cpus = ", ".join(f"{n.name}: {n.num_cpus} CPU" for n in state.nodes)
    return [f"# Ray cluster {state.cluster_id} at {state.address} ({cpus}); dashboard {state.dashboard_url}",
            f"# MLflow tracking server {state.tracking_uri} (store {Path(state.dir) / 'mlflow'})",
            f"# shared storage: --set ray.storage_path={state.storage_path}",
            f"# stop with: hsakd-ray cluster down --dir {state.dir}",
            *export_lines(state)]


def describe_status(state: ClusterState, nodes: list[dict]) -> list[str]:
    lines = [f"cluster {state.cluster_id} at {state.address}, dashboard {state.dashboard_url}, "
             f"MLflow {state.tracking_uri} ({'up' if any(alive(p) for p in state.mlflow_pids) else 'DOWN'})"]
    for node in sorted(nodes, key=lambda n: next((k for k in n["Resources"] if k.startswith("node_")), "")):
        label = next((k for k in node["Resources"] if k.startswith("node_")), "?")
        role = "head" if label == state.nodes[0].resource else "worker"  # node_0 is the head (up)
        lines.append(f"  {label:<8}{role:<8}{'alive' if node['Alive'] else 'dead':<7}{node['NodeID'][:12]}  "
                     f"{node['NodeManagerAddress']}  {node['Resources'].get('CPU', 0):g} CPU")
    return lines + export_lines(state)
