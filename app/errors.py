"""Errors that carry their HTTP status; one handler in app/__init__.py turns them into JSON."""
from __future__ import annotations


class ApiError(Exception):
    """A failure the client should see as `{"error": message}` with `status`."""

    status: int = 400

    def __init__(self, message: str, status: int | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.retry_after = retry_after


class BadRequest(ApiError):
    status = 400


class TooLarge(ApiError):
    """Too many bytes (the upload, a download, a base64 field)."""

    status = 413


class ResolutionTooHigh(TooLarge):
    """Too many pixels, or a decode that would cost too much memory: remove.bg's resolution_too_high."""


class UnsupportedMedia(ApiError):
    status = 415


class CorruptImage(ApiError):
    status = 422


class Unavailable(ApiError):
    """The model is loading, failed or busy: the client should retry later."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class Busy(Unavailable):
    """The inference queue is full or the wait ran out: remove.bg clients expect 429 for this."""
