"""Start or join Ray; once joined, the checks that need the cluster (resources its nodes and autoscaler can give,
storage and a tracking store every node can use); and the clean-up of Ray processes a killed driver left behind."""
from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import ray

from ..errors import ClusterError, ConfigError
from ..process_marks import alive, marked_processes, open_files, start_time, stop_processes
from ..ray_compat import autoscaler_max_resources
from ..tracking.store import is_local_store
from ..verbosity import ray_logging_level, verbose
from .job_checks import is_remote_storage, joins_cluster, shortfall

T = TypeVar("T")

SHARED_MARKER = ".hsakd-shared"  # a file in a local storage_path declaring it shared by every node (NFS, one host)
DRIVER_MARK = "HSAKD_RAY_DRIVER"  # "<pid>:<start time>" of the driver, inherited by every process its Ray spawns


# ---------------------------------------------------------------- resources

def check_cluster_resources(per_worker: dict[str, float], num_workers: int, what: str,
                            extra_cpu: float = 0.0) -> None:
    """Once Ray runs (joined or started here): refuse what the cluster's nodes can never give ``what`` (a job, a
    trial). A shortfall an autoscaler can fill is a warning; one it cannot fill, or with no autoscaler, is refused."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_max = {k: max(n["Resources"].get(k, 0.0) for n in nodes) for k in per_worker} if nodes else {}
    problem = shortfall(per_worker, num_workers, extra_cpu, ray.cluster_resources(), node_max)
    if not problem:
        return
    ceiling = autoscaler_max_resources()
    if ceiling is not None and not shortfall(per_worker, num_workers, extra_cpu, ceiling, None):
        print(f"warning: {what} needs {problem.format(where='the cluster')} now; waiting for the autoscaler to add "
              "nodes", flush=True)
        return
    where = "the cluster" + (" (at its autoscaler's maximum)" if ceiling is not None else "")
    raise ClusterError(f"{what} needs {problem.format(where=where)}: lower the resources asked for, or add nodes")


# ---------------------------------------------------------------- a driver's own Ray processes

SESSION_OWNER_FILE = "hsakd_driver"  # in a local Ray's session directory: the id of the driver that started it
_SESSION_DIR = re.compile(r"^(.*/session_[^/]+)/")


def _driver_id(pid: int) -> str:
    return f"{pid}:{start_time(pid)}"


def _driver_gone(driver: str) -> bool:
    """True for a well-formed driver id whose process has exited (a reused pid has another start time)."""
    pid, _, started = driver.partition(":")
    return pid.isdigit() and started.isdigit() and start_time(int(pid)) != started


def _session_owner(pid: int) -> str | None:
    """The driver that started the Ray session ``pid`` writes its logs to, read from the session's owner file."""
    for path in open_files(pid):
        found = _SESSION_DIR.match(path)
        if found:
            try:
                return (Path(found.group(1)) / SESSION_OWNER_FILE).read_text().strip()
            except OSError:
                return None
    return None


def orphaned_ray_processes() -> dict[int, str]:
    """Processes of a local Ray that an hsakd-ray driver started and that outlived it (the driver was SIGKILLed):
    pid -> command line. Two kinds: processes that carry the driver's mark in their environment (GCS, raylet,
    dashboard, workers) with the driver gone; and the raylet's agents (dashboard agent, runtime-env agent, which do
    not inherit the mark) whose raylet is gone, in a session whose owner file names a driver that is gone. Never a
    live driver's Ray, never a cluster started with ``ray start`` or ``hsakd-ray cluster up`` (no mark, no owner)."""
    orphans = {pid: cmd for pid, (mark, cmd) in marked_processes(DRIVER_MARK).items() if _driver_gone(mark)}
    for pid, (raylet, cmd) in marked_processes("RAY_RAYLET_PID").items():
        if pid in orphans or (raylet.isdigit() and alive(int(raylet))):
            continue
        owner = _session_owner(pid)
        if owner and _driver_gone(owner):
            orphans[pid] = cmd
    return orphans


def stop_orphaned_ray_processes() -> int:
    """Stop what dead drivers' local Ray instances left running (dashboard, agents, raylet, GCS); how many."""
    found = orphaned_ray_processes()
    if found:
        stop_processes(orphaned_ray_processes)
        print(f"stopped {len(found)} Ray processes left by a killed hsakd-ray driver", flush=True)
    return len(found)


def _claim_session(session_dir: str | None) -> None:
    """Write this driver's id into the session directory of the Ray it just started (see orphaned_ray_processes)."""
    if session_dir:
        (Path(session_dir) / SESSION_OWNER_FILE).write_text(_driver_id(os.getpid()))


def init_ray(address: str | None) -> bool:
    """``None`` starts a local Ray instance; ``auto`` or ``host:port`` joins a running cluster.

    Returns True when this call started (or joined) Ray, so the caller owns ``ray.shutdown``; False when Ray was
    already initialised by someone else. A local start first stops what killed drivers left behind, and marks the
    processes it starts with this driver's id so the next start can do the same if this driver is killed."""
    if ray.is_initialized():
        return False
    stop_orphaned_ray_processes()
    if not joins_cluster(address):  # only the processes ray.init spawns carry the mark, not later children of ours
        os.environ[DRIVER_MARK] = _driver_id(os.getpid())
    try:
        # -v: Ray's own output back (verbosity.py)
        context = ray.init(address=address or None, log_to_driver=verbose(), logging_level=ray_logging_level())
    except ConnectionError as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    finally:
        os.environ.pop(DRIVER_MARK, None)
    if not joins_cluster(address):
        _claim_session(context.address_info.get("session_dir"))
    return True


SHUTDOWN_WAIT_S = 20.0  # the most an interrupted driver waits for ray.shutdown (well under GCS's 60 s reconnect)


def shutdown_within(seconds: float = SHUTDOWN_WAIT_S) -> bool:
    """``ray.shutdown()`` on a helper thread, waited for at most ``seconds``; False when it did not return in time.

    After SIGTERM to the whole process group, Ray's GCS and raylet are gone as well and a shutdown can wait on them;
    an interrupted driver must still close its MLflow runs and exit (cli.py leaves at once when this returns False)."""
    if not ray.is_initialized():
        return True
    done = threading.Event()

    def stop() -> None:
        try:
            ray.shutdown()
        finally:
            done.set()

    threading.Thread(target=stop, name="hsakd-ray-shutdown", daemon=True).start()
    return done.wait(seconds)


def init_ray_beside(address: str | None, work: Callable[[], T]) -> tuple[bool, T]:
    """``init_ray(address)`` with ``work`` run on a thread meanwhile: (``init_ray``'s result, ``work``'s result).

    Starting a local Ray is mostly waiting for its services (5 to 7 s on 2 cores); opening a fresh sqlite MLflow
    store (creating its tables: about 2 s) fits in that wait instead of following it. A Ray started here is shut
    down again if ``work`` fails."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsakd-beside-ray") as pool:
        done = pool.submit(work)
        started = init_ray(address)  # Ray's signal handling wants the main thread: the work is the one moved
        try:
            return started, done.result()
        except BaseException:
            if started:
                ray.shutdown()
            raise


# ---------------------------------------------------------------- multi-node paths

def check_cluster_paths(storage_path: str, tracking_uri: str, address: str | None) -> None:
    """On a multi-node cluster, refuse a node-local storage_path (other nodes' trials could not checkpoint or resume)
    and a file-based tracking store (sqlite, file: a cluster's runs belong on a tracking server that every user
    reaches, and sqlite takes one writer at a time). A loopback server URI is accepted: only the driver writes to
    MLflow (Tune's trial logger runs in the driver; Train pins each run's controller, which logs its epochs, to the
    driver's node), so a server on the driver's node is enough.

    Decided from the nodes Ray reports, not from ``address``: ``ray.init()`` also joins a cluster through
    ``RAY_ADDRESS``."""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    if len(nodes) <= 1:
        return
    if not is_remote_storage(storage_path) and not Path(storage_path).is_mount():
        marker = Path(storage_path) / SHARED_MARKER
        if not marker.exists():
            raise ConfigError(
                f"ray.storage_path {storage_path!r} is a local directory but the cluster has {len(nodes)} nodes, "
                f"which cannot all see it: use s3://, gs:// or a shared filesystem (create {marker} to declare "
                "a shared mount)"
            )
    if is_local_store(tracking_uri):
        raise ConfigError(
            f"tracking URI {tracking_uri!r} is a local store but the cluster has {len(nodes)} nodes: "
            "start an MLflow tracking server and pass --tracking-uri http://HOST:PORT"
        )
