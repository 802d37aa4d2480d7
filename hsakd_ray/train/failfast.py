"""Errors that no retry can fix end a Train run at once: a worker's ``UserError`` (a data error naming the file or
class, a diverged loss) is not retried by Ray Train's ``FailureConfig``, and reaches the driver as itself.

Ray Train V2 retries every worker-group error up to ``max_failures`` and has no public way to mark an exception as
final. What it does offer: a ``UserCallback`` runs in the controller after the workers fail (``after_exception``),
and an exception raised there is a controller error, which its failure policy never retries. The error then reaches
``trainer.fit()`` as ``ray.train.ControllerError`` holding it; ``user_error`` takes it back out."""
from __future__ import annotations

from ray.train import UserCallback

from ..errors import UserError


class StopOnUserError(UserCallback):
    """Fail the run, without a retry, when a worker raised a ``UserError``. Keep it last among a trainer's
    callbacks, so the others (the MLflow epoch logger) see the failure first."""

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        for rank in sorted(worker_exceptions):
            if isinstance(worker_exceptions[rank], UserError):
                raise worker_exceptions[rank]


def user_error(exc: BaseException) -> UserError | None:
    """The ``UserError`` a failed ``fit()`` carries (stopped by ``StopOnUserError``), else None."""
    if isinstance(exc, UserError):
        return exc
    failure = getattr(exc, "controller_failure", None)  # ray.train.ControllerError
    return failure if isinstance(failure, UserError) else None


def fit_or_user_error(fit):
    """``fit()``, with a worker's ``UserError`` raised as itself (one line for the CLI), not inside Ray's error."""
    try:
        return fit()
    except Exception as exc:
        found = user_error(exc)
        if found is None:
            raise
        raise found from None
