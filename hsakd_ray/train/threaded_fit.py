"""``trainer.fit()`` on a helper thread, so the calling thread stays free: for Ctrl-C and SIGTERM (Python runs signal
handlers in the main thread only), and to hand on what the job's callbacks send from Train's controller (a
``ray.util.queue.Queue``) as it arrives: the console's epoch lines, PBT's checkpoints for Tune."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray.util.queue import Empty, Queue

from .failfast import fit_or_user_error


def fit_in_thread(trainer, queue: Queue | None = None, forward: Callable[[Any], None] | None = None) -> Any:
    """Run ``trainer.fit()`` on a thread; meanwhile pass every item put on ``queue`` to ``forward``, in order, here.
    Returns what ``fit`` returns (after the last item is forwarded) or raises what it raised."""
    outcome: dict = {}

    def fit() -> None:
        try:
            outcome["result"] = fit_or_user_error(trainer.fit)  # a worker's UserError as itself
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="hsakd-fit", daemon=True)
    thread.start()
    while thread.is_alive() or (queue is not None and not queue.empty()):
        if queue is None:
            thread.join(timeout=0.2)
            continue
        try:
            item = queue.get(timeout=0.2)
        except Empty:
            continue
        forward(item)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
