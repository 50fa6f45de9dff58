"""The repository's typed errors; the API maps each to an HTTP answer (service/errors.py)."""

from __future__ import annotations


class RepoError(Exception):
    """Base of the typed errors the API maps to HTTP answers."""


class JobNotFound(RepoError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


# How a status reads after "job X ...": "job X already succeeded".
_STATUS_PHRASE = {
    "queued": "is still queued",
    "running": "is still running",
    "cancelling": "is being cancelled",
    "succeeded": "already succeeded",
    "failed": "already failed",
    "cancelled": "was already cancelled",
}


class InvalidTransition(RepoError):
    """A status change the state machine does not allow (HTTP 409 with `current`)."""

    def __init__(self, job_id: str, current: str, target: str, action: str | None = None):
        self.job_id, self.current, self.target = job_id, current, target
        self.action = action or f"move to {target}"
        phrase = _STATUS_PHRASE.get(str(current), f"is {current}")
        super().__init__(f"cannot {self.action} job {job_id}: it {phrase}")


class IdempotencyConflict(RepoError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(
            f"this Idempotency-Key was used with a different request body (it created job {job_id})"
        )


class ParentError(RepoError):
    """The spec's parent is missing, not succeeded, of the wrong kind, or lacks the checkpoint."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")


class StudyNotFound(RepoError):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"study {name} not found")


class StudyCancelled(RepoError):
    """A job of the study was not stored: the study is cancelled (or deleted). Only a pass of
    the study meets it (service/studies.py), never a client."""

    def __init__(self, name: str):
        self.name = name
        super().__init__(f"study {name} was cancelled (or deleted)")
