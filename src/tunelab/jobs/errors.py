"""What the jobs service refuses, with the HTTP status, OpenAI error code and parameter a client sees."""

from __future__ import annotations

from ..errors import TunelabError


class JobsError(TunelabError):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def not_found(what: str, the_id: str, param: str) -> JobsError:
    """Another project's object answers exactly as one that does not exist."""
    return JobsError(404, f"No such {what}: {the_id!r}", param=param, code="not_found")


def invalid(message: str, param: str | None = None, code: str | None = None) -> JobsError:
    return JobsError(400, message, param=param, code=code or "invalid_request_error")


def disk_full() -> JobsError:
    """The server's disk (or quota) is full: 507 Insufficient Storage, a server error OpenAI's clients raise as such
    (and retry, as any 5xx). The path stays in the server's log: clients don't learn the server's layout."""
    return JobsError(507, "the server's disk is full: nothing was stored. Try again once space has been freed on the "
                     "server", code="insufficient_storage")
