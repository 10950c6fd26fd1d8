"""The exceptions that steer batchdrop: retry later, or record and stop."""

from __future__ import annotations


class BatchdropError(Exception):
    """Base of batchdrop's own errors."""


class ConfigError(BatchdropError):
    """A setting or the pipelines file is missing or wrong; the message names which."""


class TransientError(BatchdropError):
    """Try again later: the trigger lets the message or event be redelivered."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(BatchdropError):
    """Retrying cannot help: record the reason where the status API shows it, then stop."""


class RejectedInput(PermanentError):
    """An input (blob, event or message) that batchdrop will not process, with the reason."""


class JobClosed(PermanentError):
    """The Batch job no longer accepts tasks (completed, terminating or deleted)."""
