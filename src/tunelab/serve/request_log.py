"""The request log's writer: one row per request, written in order on the server's single writer thread, off the
event loop. The database going away never reaches the clients.

When the database can't take a row (locked by another program past the busy timeout, read-only, its disk full,
its file or directory gone) the request is still answered; its row waits in memory (at most MAX_PARKED_BYTES,
then the oldest are dropped and counted) and is written, with those before it, once the database takes writes
again. Each outage is said once in the server's log when it starts and once when it ends (how long, rows written
late, rows dropped), never once per request; /metrics counts failed writes and lost rows as they happen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import InterfaceError, OperationalError

from .store import Base, RequestLog, Store, pack

log = logging.getLogger("tunelab.serve")
BUSY_S = 5.0  # how long a write waits for another connection's lock before it counts as failed
RETRY_S = 1.0  # while failing: one write attempt a second, whatever the request rate
MAX_QUEUED = 500  # rows handed to the writer and not yet taken up (each holds its prompt's token ids)
MAX_PARKED_BYTES = 64 * 1024 * 1024  # rows waiting for the database to come back
# the database away (locked, read-only, full, gone, its server down): the rows wait; any other error is a row it
# refuses, which no retry would change
AWAY = (OperationalError, InterfaceError, OSError)


def _size(fields: dict[str, Any]) -> int:
    return 256 + sum(len(v) for v in fields.values() if isinstance(v, str | bytes))


def _reason(exc: BaseException) -> str:
    """The database's own words (e.g. 'database is locked'), without SQLAlchemy's echo of the statement and its
    parameters: those hold what clients sent."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig or exc}"


class RequestLogWriter:
    def __init__(self, store: Store, writer: ThreadPoolExecutor, embed: Callable[[list[int]], list[float]],
                 registry: CollectorRegistry) -> None:
        self.store, self.writer, self.embed = store, writer, embed
        self._lock = threading.Lock()  # guards _queued, which the event loop's threads change too
        self._queued = 0
        # the rest is the writer thread's alone
        self._parked: deque[dict[str, Any]] = deque()
        self._parked_bytes = 0
        self._failing_since: float | None = None
        self._next_try = 0.0
        self._lost = 0  # rows dropped in this outage
        self._dropping_said = self._embed_said = False
        self._timer: threading.Timer | None = None
        self._closed = False
        self.failures = Counter("tunelab_request_log_write_failures", "Attempts to write request-log rows that "
                                "failed (database locked, read-only, full or gone); requests are answered anyway",
                                registry=registry)
        self.dropped = Counter("tunelab_request_log_dropped_rows", "Request-log rows lost because the database "
                               "could not take them for too long", registry=registry)
        Gauge("tunelab_request_log_waiting_rows", "Request-log rows not yet written (queued or waiting for the "
              "database)", registry=registry).set_function(lambda: self._queued + len(self._parked))
        Gauge("tunelab_request_log_ok", "1 while request-log writes succeed, 0 while the database refuses them",
              registry=registry).set_function(lambda: float(self._failing_since is None))

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def submit(self, fields: dict[str, Any], prompt: list[int] | None = None) -> None:
        """Hand a row to the writer thread, which also embeds `prompt` if given. Never blocks, never raises."""
        with self._lock:
            behind = self._queued >= MAX_QUEUED  # the writer is stuck (a long busy wait): don't pile up prompts
            self._queued += 0 if behind else 1
        if behind:
            self._drop(1, "the writer is behind")
            return
        try:
            self.writer.submit(self._take, fields, prompt)
        except RuntimeError:  # the writer is shut down: the server is stopping
            with self._lock:
                self._queued -= 1

    def close(self) -> None:
        """At shutdown: one last try for rows still waiting, then stop the writer thread."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        with contextlib.suppress(RuntimeError):
            self.writer.submit(self._flush)
        self.writer.shutdown(wait=True)
        if self._parked:
            log.warning("request log: %d rows could not be written before the server stopped", len(self._parked))

    # ---- the writer thread ------------------------------------------------------------------------

    def settle(self) -> None:
        """Before a deletion (on the writer thread): write the rows still waiting, so that none is written back
        after it; while the database still refuses them, the deletion waits too (503 via OperationalError)."""
        self._flush()
        if self._parked:
            raise OperationalError("request log", {}, Exception(
                f"{len(self._parked)} rows are waiting to be written first"))

    def _take(self, fields: dict[str, Any], prompt: list[int] | None) -> None:
        with self._lock:
            self._queued -= 1
        if prompt:
            try:  # computed here, off the event loop
                fields["embedding"] = pack(self.embed(prompt))
            except Exception as exc:  # drift checks go without this prompt; the row is written anyway
                if not self._embed_said:
                    self._embed_said = True
                    log.warning("request log: could not embed a prompt for drift checks: %s", exc)
        self._parked.append(fields)
        self._parked_bytes += _size(fields)
        while self._parked_bytes > MAX_PARKED_BYTES and len(self._parked) > 1:
            self._parked_bytes -= _size(self._parked.popleft())
            self._drop(1, f"more than {MAX_PARKED_BYTES >> 20} MiB of rows were waiting")
        if self._failing_since is None or time.time() >= self._next_try:
            self._flush()
        else:
            self._retry_later()

    def _flush(self) -> None:
        if not self._parked:
            return
        rows = list(self._parked)
        try:
            self._reopen_if_gone()
            self._write(rows)
        except AWAY as exc:  # keep the rows, try again later
            self._failed(exc)
            return
        except Exception as exc:  # the database is there but refuses a row: retrying won't help; save the others
            refused = 0
            for fields in rows:
                try:
                    self._write([fields])
                except AWAY as away:
                    self._failed(away)
                    return
                except Exception:
                    refused += 1
                self._clear(1)
            if refused:
                self._drop(refused, f"the database refused them ({_reason(exc)})")
        else:
            self._clear(len(rows))
        if self._failing_since is not None:
            log.warning("request log: writes resumed after %.0f s; %d rows written late, %d lost",
                        time.time() - self._failing_since, len(rows), self._lost)
        self._failing_since, self._lost = None, 0
        self._dropping_said = False

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self.store.session() as s:
            for fields in rows:
                s.merge(RequestLog(**fields))

    def _clear(self, n: int) -> None:
        for _ in range(n):
            self._parked_bytes -= _size(self._parked.popleft())

    def _failed(self, exc: BaseException) -> None:
        self.failures.inc()
        if self._failing_since is None:
            self._failing_since = time.time()
            log.warning("request log: can't write to %s (%s); requests are still answered and their rows wait in "
                        "memory (up to %d MiB) until the database takes writes again", self._where(), _reason(exc),
                        MAX_PARKED_BYTES >> 20)
        self._next_try = time.time() + RETRY_S
        self._retry_later()

    def _drop(self, n: int, why: str) -> None:
        self.dropped.inc(n)
        with self._lock:
            self._lost += n
            said, self._dropping_said = self._dropping_said, True
        if not said:
            log.warning("request log: dropping rows (%s); /metrics counts them in "
                        "tunelab_request_log_dropped_rows_total", why)

    def _retry_later(self) -> None:
        """While failing, a retry a second even when no request comes to trigger one."""
        if self._closed or (self._timer is not None and self._timer.is_alive()):
            return

        def retry() -> None:
            with contextlib.suppress(RuntimeError):
                self.writer.submit(self._flush)

        self._timer = threading.Timer(RETRY_S, retry)
        self._timer.daemon = True
        self._timer.start()

    def _reopen_if_gone(self) -> None:
        """A SQLite file removed under the server: its open connections would go on writing into the deleted file,
        so reconnect, and make the tables again in the new file (the directory must be there: it isn't made
        again, in case it was a disk that is not mounted)."""
        engine = self.store.engine
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        if path and path != ":memory:" and not os.path.exists(path):
            engine.dispose()
            if not os.path.isdir(os.path.dirname(path) or "."):
                raise OSError(f"{os.path.dirname(path)}: the request log's directory is gone")
            Base.metadata.create_all(engine)
        elif self._failing_since is not None:  # e.g. the tables were lost with the file: cheap when they exist
            Base.metadata.create_all(engine)

    def _where(self) -> str:
        url = self.store.engine.url
        return url.database if url.get_backend_name() == "sqlite" else url.render_as_string(hide_password=True)
