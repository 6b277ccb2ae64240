"""The server's records: one row per request, feedback on answers, and each adapter's training profile.

SQLite in the server's data directory by default; any SQLAlchemy URL (e.g. postgresql://...) instead.
Prompt and completion text are stored only when content logging is on; the prompt's mean embedding
(for drift) and token counts always are.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text, delete, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..jobs.db import make_engine
from ..jobs.service import CKPT

log = logging.getLogger("tunelab.serve")


class Base(DeclarativeBase):
    pass


class RequestLog(Base):
    __tablename__ = "requests"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created: Mapped[float] = mapped_column(Float, index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256), index=True)
    adapter: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON messages or text; content logging only
    completion: Mapped[str | None] = mapped_column(Text, nullable=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # whose key asked (None: logged before projects were recorded, or refused before its key was checked)
    project: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)


class Feedback(Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), ForeignKey("requests.id"), index=True)
    created: Mapped[float] = mapped_column(Float)
    rating: Mapped[str] = mapped_column(String(8))  # up | down
    correction: Mapped[str | None] = mapped_column(Text, nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)


class TrainingProfile(Base):
    """What an adapter was tuned on, summarised for drift checks: prompt lengths and mean embeddings."""

    __tablename__ = "training_profiles"
    adapter: Mapped[str] = mapped_column(String(256), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float)
    lengths: Mapped[str] = mapped_column(Text)  # JSON list of prompt token counts
    embeddings: Mapped[bytes] = mapped_column(LargeBinary)  # packed float16 rows
    dim: Mapped[int] = mapped_column(Integer)


def pack(vec: list[float]) -> bytes:
    return struct.pack(f"<{len(vec)}e", *vec)  # float16: plenty for a centroid distance


def unpack(blob: bytes | None) -> list[float] | None:
    if not blob:
        return None
    return list(struct.unpack(f"<{len(blob) // 2}e", blob))


def database_url(data_dir: Path, url: str | None) -> str:
    return url or f"sqlite:///{(data_dir / 'tunelab-serve.db').resolve()}"


class Store:
    def __init__(self, url: str, busy_timeout_s: float | None = None) -> None:
        """`busy_timeout_s`: how long a SQLite write waits for another connection's lock (default: 30 s)."""
        self.engine = make_engine(url)
        if busy_timeout_s is not None and self.engine.dialect.name == "sqlite":
            ms = int(busy_timeout_s * 1000)
            event.listen(self.engine, "connect", lambda con, _: con.execute(f"PRAGMA busy_timeout = {ms}"))
        if self.engine.dialect.name == "sqlite":  # deleted rows are overwritten, not left in free pages
            event.listen(self.engine, "connect", _secure_delete)
        Base.metadata.create_all(self.engine)
        upgrade(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s, s.begin():
            yield s

    def get_request(self, request_id: str) -> RequestLog | None:
        with self.sessions() as s:
            return s.get(RequestLog, request_id)

    def add_feedback(self, request_id: str, rating: str, correction: str | None, comment: str | None) -> int:
        with self.session() as s:
            fb = Feedback(request_id=request_id, created=time.time(), rating=rating, correction=correction,
                          comment=comment)
            s.add(fb)
            s.flush()
            return fb.id

    def requests_since(self, since: float) -> list[RequestLog]:
        with self.sessions() as s:
            return list(s.scalars(select(RequestLog).where(RequestLog.created >= since)
                                  .order_by(RequestLog.created)))

    def requests_of(self, model: str, *, since: float = 0.0, limit: int | None = None) -> list[RequestLog]:
        """One model's logged requests, newest first."""
        with self.sessions() as s:
            q = (select(RequestLog).where(RequestLog.model == model, RequestLog.created >= since)
                 .order_by(RequestLog.created.desc()))
            return list(s.scalars(q.limit(limit) if limit else q))

    def feedback_on(self, request_ids: list[str]) -> dict[str, list[Feedback]]:
        with self.sessions() as s:
            out: dict[str, list[Feedback]] = {}
            q = select(Feedback).where(Feedback.request_id.in_(request_ids)).order_by(Feedback.created)
            for fb in s.scalars(q):
                out.setdefault(fb.request_id, []).append(fb)
            return out

    def feedback_for(self, adapter: str | None) -> list[tuple[Feedback, RequestLog]]:
        with self.sessions() as s:
            q = select(Feedback, RequestLog).join(RequestLog, Feedback.request_id == RequestLog.id)
            if adapter is not None:
                q = q.where(RequestLog.model == adapter)
            return [(fb, req) for fb, req in s.execute(q.order_by(Feedback.created)).all()]

    def save_profile(self, adapter: str, source: str, lengths: list[int], embeddings: list[list[float]]) -> None:
        dim = len(embeddings[0]) if embeddings else 0
        blob = b"".join(pack(v) for v in embeddings)
        with self.session() as s:
            s.merge(TrainingProfile(adapter=adapter, source=source, created=time.time(), lengths=json.dumps(lengths),
                                    embeddings=blob, dim=dim))

    def profiles(self) -> dict[str, tuple[str, list[int], list[list[float]]]]:
        with self.sessions() as s:
            out = {}
            for p in s.scalars(select(TrainingProfile)):
                flat = unpack(p.embeddings) or []
                rows = [flat[i:i + p.dim] for i in range(0, len(flat), p.dim)] if p.dim else []
                out[p.adapter] = (p.source, json.loads(p.lengths), rows)
            return out

    def delete_requests(self, project: str, *, ids: list[str] | None = None, before: float | None = None,
                        model: str | None = None, unowned: bool = False) -> tuple[int, int]:
        """Delete a project's logged requests (those in `ids`, logged before `before`, of `model`) with the feedback
        on them; `unowned`: also rows that name no project (a server without keys is one user's). Gives (requests,
        feedback) deleted. SQLite's copy of the deleted text goes too: secure_delete zeroes the freed pages, and the
        write-ahead log, which still holds them, is emptied."""
        whose = RequestLog.project == project
        where = [whose | RequestLog.project.is_(None) if unowned else whose]
        if ids is not None:
            where.append(RequestLog.id.in_(ids))
        if before is not None:
            where.append(RequestLog.created < before)
        if model is not None:
            where.append(RequestLog.model == model)
        with self.session() as s:
            rows = select(RequestLog.id).where(*where)
            feedback = s.execute(delete(Feedback).where(Feedback.request_id.in_(rows))).rowcount
            requests = s.execute(delete(RequestLog).where(*where)).rowcount
        self._truncate_wal()
        return requests, feedback

    def delete_feedback(self, feedback_id: int) -> None:
        with self.session() as s:
            s.execute(delete(Feedback).where(Feedback.id == feedback_id))
        self._truncate_wal()

    def get_feedback(self, feedback_id: int) -> tuple[Feedback, RequestLog] | None:
        with self.sessions() as s:
            row = s.execute(select(Feedback, RequestLog).join(RequestLog, Feedback.request_id == RequestLog.id)
                            .where(Feedback.id == feedback_id)).first()
            return (row[0], row[1]) if row is not None else None

    def _truncate_wal(self) -> None:
        if self.engine.dialect.name != "sqlite":
            return
        try:  # best effort: a reader holding an old snapshot keeps the log until the next deletion
            with self.engine.connect() as c:
                c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # the rows are deleted either way
            log.warning("could not empty the request log's write-ahead log: %s", exc)


def _secure_delete(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()


def upgrade(engine: Any) -> None:
    """Columns added since a database was made (create_all adds only missing tables), added in place: the request
    log's `project`, filled in for fine-tuned models, whose names say their project (ft:<base>:<project>:...)."""
    if "project" in {c["name"] for c in inspect(engine).get_columns("requests")}:
        return
    try:
        with engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE requests ADD COLUMN project VARCHAR(128)")
            c.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_requests_project ON requests (project)")
            for model in list(c.scalars(select(RequestLog.model).where(RequestLog.model.like("ft:%")).distinct())):
                # counted from the end: the base may be a fine-tuned model itself (ft:ft:<base>:<p>:<s>:<id>:...)
                parts = model.split(CKPT)[0].split(":")
                if len(parts) >= 5:
                    c.execute(RequestLog.__table__.update().where(RequestLog.model == model).values(project=parts[-3]))
    except Exception:
        # another server sharing the database added it a moment ago
        if "project" not in {c["name"] for c in inspect(engine).get_columns("requests")}:
            raise
