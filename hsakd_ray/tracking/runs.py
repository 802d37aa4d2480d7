"""Run lifecycle owned by hsakd-ray (not by Ray callbacks): create or find a run by its name tag, log the
resolved config as params, mark the final status, and reconcile runs whose driver died.

``tracked_run`` is the one place that decides a run's final status: FINISHED when its body returns, KILLED on
Ctrl-C or SIGTERM, FAILED (tag ``error``, one plain line) on any other exception."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from ..errors import Terminated, one_line  # Terminated: SIGTERM, raised in the main thread like Ctrl-C
from .ui import model_experiment

NAME_TAG, KIND_TAG, HOST_TAG, PID_TAG = "hsakd.run_name", "hsakd.kind", "hsakd.host", "hsakd.driver_pid"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_LEN = 6000


def get_experiment_id(client: MlflowClient, name: str) -> str:
    return model_experiment(client, name)  # created or found, tagged as model training (tracking/ui.py)


def find_run(client: MlflowClient, experiment_id: str, tag: str, value: str) -> str | None:
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=2)
    return runs[0].info.run_id if runs else None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(__file__))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def base_tags(kind: str, name: str) -> dict[str, str]:
    from .. import __version__

    tags = {KIND_TAG: kind, NAME_TAG: name, HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            "hsakd.version": __version__, "mlflow.runName": name}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def start_run(client: MlflowClient, experiment_id: str, name: str, tags: dict[str, str],
              params: dict | None = None, resume: bool = False) -> str:
    """A new run tagged ``hsakd.run_name=name``, or, with ``resume``, the existing one set back to RUNNING."""
    run_id = find_run(client, experiment_id, NAME_TAG, name) if resume else None
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        if params:
            log_params(client, run_id, params)
    else:
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items() if k in (PID_TAG, HOST_TAG)])
    return run_id


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def finish_run(client: MlflowClient, run_id: str, status: str, error: str | None = None) -> None:
    """Set FINISHED, FAILED (with the error message as tag ``error``) or KILLED."""
    if error:
        client.set_tag(run_id, "error", one_line(error, 5000))  # no terminal colour codes, one line
    client.set_terminated(run_id, status)


def logged_epochs(client: MlflowClient, run_id: str, key: str = "epoch_time") -> set[int]:
    return {m.step for m in client.get_metric_history(run_id, key)}


def log_epoch(client: MlflowClient, run_id: str, epoch: int, metrics: dict, timestamp_ms: int) -> None:
    """All numeric metrics of one epoch with ``step=epoch``, in one request."""
    batch = [Metric(k, float(v), timestamp_ms, epoch) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reconcile_orphans(client: MlflowClient, experiment_ids: Iterable[str]) -> list[str]:
    """Mark KILLED the RUNNING runs started on this host by a driver process that no longer exists."""
    host, fixed = socket.gethostname(), []
    for run in client.search_runs(list(experiment_ids), filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        if tags.get(HOST_TAG) == host and PID_TAG in tags and not pid_alive(int(tags[PID_TAG])):
            client.set_tag(run.info.run_id, "hsakd.reconciled", "driver process gone")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            fixed.append(run.info.run_id)
    return fixed


def log_metric_once(client: MlflowClient, run_id: str, key: str, value: float, step: int = 0) -> None:
    """Log ``key`` at ``step`` unless the run already holds a value there (a resumed command repeats its summary)."""
    if not any(m.step == step for m in client.get_metric_history(run_id, key)):
        client.log_metric(run_id, key, value, step=step)


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


def _sigterm_as_sigint(signum, frame):
    """SIGTERM does what SIGINT does now: whatever handler is installed (Tune's graceful stop during a sweep),
    else a KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)
    else:
        raise Terminated(f"signal {signum}")


@dataclass
class ActiveRun:
    client: MlflowClient
    run_id: str
    experiment_id: str


@contextmanager
def tracked_run(client: MlflowClient, experiment_name: str, name: str, tags: dict[str, str],
                params: dict | None = None, resume: bool = False,
                on_interrupt: Callable[[], None] | None = None) -> Iterator[ActiveRun]:
    """Start (or, with ``resume``, reopen) the run named ``name``; close it FINISHED, KILLED or FAILED.

    While the body runs, SIGTERM acts as SIGINT. On an interrupt ``on_interrupt`` runs first (e.g. stop Ray, so
    nothing logs after the status is final), then the run is KILLED and KeyboardInterrupt propagates. Runs of this
    experiment left RUNNING by a driver that died are marked KILLED first."""
    experiment_id = get_experiment_id(client, experiment_name)
    reconcile_orphans(client, [experiment_id])
    run_id = start_run(client, experiment_id, name, tags, params, resume=resume)
    main = threading.current_thread() is threading.main_thread()  # only the main thread may handle signals
    previous = signal.signal(signal.SIGTERM, _sigterm_as_sigint) if main else None
    try:
        yield ActiveRun(client, run_id, experiment_id)
    except (KeyboardInterrupt, SystemExit) as exc:  # SystemExit: Ray's own SIGINT handlers end with sys.exit
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated SIGTERM must not cut the clean-up short
        if on_interrupt is not None:
            on_interrupt()  # bounded: on SIGTERM to the process group, Ray's own processes are going down too
        finish_run(client, run_id, "KILLED")
        raise (Terminated() if isinstance(exc, Terminated) else KeyboardInterrupt()) from None
    except BaseException as exc:
        finish_run(client, run_id, "FAILED", error=f"{type(exc).__name__}: {exc}")
        raise
    else:
        finish_run(client, run_id, "FINISHED")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
