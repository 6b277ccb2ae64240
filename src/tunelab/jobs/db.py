"""The jobs service's records: uploaded files, fine-tuning jobs, their events and checkpoints.

SQLAlchemy over SQLite (WAL, in the server's data directory) by default, or any URL (postgresql://...), so that
workers on other machines can share it. The schema is created and upgraded by Alembic migrations
(jobs/migrations), never by create_all, so a database made by one version upgrades under the next.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Engine, Float, ForeignKey, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

VERSION_TABLE = "tunelab_jobs_version"  # Alembic's own table, apart from the request log's tables


class Base(DeclarativeBase):
    pass


class FileRow(Base):
    __tablename__ = "ft_files"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(Text)  # as the client sent it: metadata only, never part of a path
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    path: Mapped[str] = mapped_column(Text)  # where the server stored it, named by id


class JobRow(Base):
    __tablename__ = "ft_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(Text)
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)  # OpenAI's method object, hyperparameters resolved
    extension: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # tunelab's own config keys
    config: Mapped[str | None] = mapped_column(Text, nullable=True)  # the tunelab config the job trains with
    sweep: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # a sweep job: its settings
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_deleted: Mapped[int] = mapped_column(Integer, default=0)
    run_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    result_files: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, index=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # the worker's side: who runs it, since when it last said so, what was asked of it
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    heartbeat: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resume: Mapped[int] = mapped_column(Integer, default=0)  # the next start continues the run from a checkpoint
    requested: Mapped[str | None] = mapped_column(String(16), nullable=True)  # cancel | pause


class EventRow(Base):
    __tablename__ = "ft_events"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("ft_jobs.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer, index=True)  # order within the job
    created_at: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(8))
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CheckpointRow(Base):
    __tablename__ = "ft_checkpoints"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("ft_jobs.id"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(Text)  # the checkpoint's adapter, kept by the job


def database_url(data_dir: Path, url: str | None) -> str:
    return url or f"sqlite:///{(data_dir / 'tunelab-jobs.db').resolve()}"


def driver_url(url: str) -> str:
    """postgresql://... through psycopg 3 (`tunelab[postgres]`), which SQLAlchemy takes only when named."""
    if url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is not None:
            return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for a database URL, shared by threads; SQLite in WAL mode. A missing driver is a ValueError
    that says what to install."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    try:
        engine = create_engine(driver_url(url), **kwargs)
    except ModuleNotFoundError as exc:
        raise ValueError(f"database URL {url!r} needs the driver {exc.name!r}: pip install it "
                         f"(`pip install 'tunelab[postgres]'` for PostgreSQL)") from None
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class JobsDB:
    """The database, migrated to the current schema on open."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.url = url
        self.migrate()
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as s, s.begin():
            yield s

    @property
    def postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL: readers (the API) never wait for the writer (a worker); NORMAL sync is safe with WAL."""
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def now() -> int:
    return int(time.time())
