"""The trial store: sweeps, trials, per-round metrics, promotions and exports, in any SQLAlchemy database.

SQLite in the working folder by default, PostgreSQL on a cluster. Every write is idempotent (keyed by
sweep name, trial id and round), so replaying Ray's events after a resume never duplicates a row.
Database errors become `StoreError` with the URL's password hidden; a dropped connection is retried
with backoff before giving up.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import psutil
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

if TYPE_CHECKING:
    from trainers.base import RoundRecord

RETRIES = 5
log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store operation failed; the message never contains the database password."""


class StoreUnavailable(StoreError):
    """The database stayed unreachable through every retry (a sweep stops resumable, not failed)."""


def now() -> datetime:
    return datetime.now(timezone.utc)


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


_FULL_URLS: dict[str, str] = {}  # password-free URL -> full URL; lives only in this process's memory


def remember_url(url: str) -> str:
    """Keep a URL's password in memory and return the password-free form that is safe to pickle or print."""
    _FULL_URLS[safe_url(url)] = url
    return safe_url(url)


def full_url(url: str) -> str:
    """The URL with its password again, if this process was given it (`remember_url`)."""
    return _FULL_URLS.get(url, url)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Sweep(Base):
    __tablename__ = "sweeper_sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    spec: Mapped[dict[str, Any]]
    spec_fingerprint: Mapped[str] = mapped_column(String(64))
    objective_metric: Mapped[str] = mapped_column(String(128))
    objective_mode: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default="created")
    message: Mapped[str] = mapped_column(Text, default="")
    experiment_path: Mapped[str] = mapped_column(Text, default="")
    audit: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=now)
    updated_at: Mapped[datetime] = mapped_column(default=now, onupdate=now)

    trials: Mapped[list[Trial]] = relationship(back_populates="sweep", order_by="Trial.id")


class Trial(Base):
    __tablename__ = "sweeper_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "trial_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeper_sweeps.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="running")
    stop_reason: Mapped[str] = mapped_column(String(32), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    best_round: Mapped[int | None] = mapped_column(Integer)
    best_value: Mapped[float | None] = mapped_column(Float)
    wall_time_s: Mapped[float] = mapped_column(Float, default=0.0)
    device: Mapped[str] = mapped_column(String(128), default="")
    node: Mapped[str] = mapped_column(String(64), default="", server_default="")
    examples_seen: Mapped[int] = mapped_column(Integer, default=0)
    tokens_seen: Mapped[int] = mapped_column(Integer, default=0)
    retries: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=now)
    finished_at: Mapped[datetime | None]

    sweep: Mapped[Sweep] = relationship(back_populates="trials")
    round_rows: Mapped[list[Round]] = relationship(back_populates="trial", order_by="Round.round")


class Round(Base):
    __tablename__ = "sweeper_rounds"
    __table_args__ = (UniqueConstraint("trial_id", "round"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("sweeper_trials.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]]  # holdout metrics only (rows before revision 0005 were split by it)
    bookkeeping: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")  # the rest of the record
    checkpoint: Mapped[str] = mapped_column(Text, default="")
    recorded_at: Mapped[datetime] = mapped_column(default=now)

    trial: Mapped[Trial] = relationship(back_populates="round_rows")


class PromotionRecord(Base):
    """One run of `sweeper promote`: the outcome and its full table (gates, values, intervals), newest last."""

    __tablename__ = "sweeper_promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeper_sweeps.id", ondelete="CASCADE"), index=True)
    trial_key: Mapped[str] = mapped_column(String(64))
    promoted: Mapped[bool] = mapped_column(Boolean)
    split: Mapped[str] = mapped_column(String(16))  # test | holdout (no test split: selection data only)
    runner_up: Mapped[str] = mapped_column(String(64), default="")
    result: Mapped[dict[str, Any]]
    export_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=now)


class Claim(Base):
    """Which process drives a sweep: one live driver per sweep name (`TrialStore.claim`)."""

    __tablename__ = "sweeper_claims"

    sweep: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(300))  # host:pid; '' while free
    token: Mapped[str] = mapped_column(String(32))  # '' while free; handing it over hands the claim over
    claimed_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]


class Driver(Base):
    """The driver a sweep service last started for a sweep (`role`: run | promote), and whether a cancel was asked
    (`sweeper.supervisor`). The service keeps no state of its own: any replica watches, cancels and restarts
    drivers through these rows."""

    __tablename__ = "sweeper_drivers"

    sweep: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    spec_path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))  # ray_job | process
    driver_id: Mapped[str] = mapped_column(String(300))  # the Ray job's submission id | host:pid
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    launched_at: Mapped[datetime] = mapped_column(default=now)


HEARTBEAT_S = 10.0  # a driver refreshes its claim this often
CANCEL_POLL_S = 1.0  # a driver looks for a cancel request this often
STALE_AFTER_S = 60.0  # a claim not refreshed for this long is free (its holder hung, or died on another host)
CLAIM_TOKEN_ENV = "SWEEPER_CLAIM_TOKEN"  # the service hands its claim to the driver it starts through this
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class ClaimHeld(StoreError):
    """Another live driver holds the sweep's claim."""

    def __init__(self, sweep: str, claim: Claim):
        self.holder = claim.owner
        super().__init__(f"sweep {sweep!r} is being run by another driver ({claim.owner}, last heartbeat "
                         f"{_age_s(claim.heartbeat_at):.0f} s ago): wait for it to end, or stop that process; its "
                         f"claim frees itself once the process is gone or silent for {STALE_AFTER_S:.0f} s")


SERVICE_OWNER = "/service"  # suffix of a claim a sweep service holds until the driver it started takes it over


def process_owner(role: str = "") -> str:
    """This process as a claim owner (`role`: SERVICE_OWNER for a service holding a claim for its driver)."""
    return f"{socket.gethostname()}:{os.getpid()}{role}"


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # SQLite hands back naive UTC


def _age_s(moment: datetime) -> float:
    return (now() - _utc(moment)).total_seconds()


def claim_alive(claim: Claim) -> bool:
    """Held, with a fresh heartbeat, and (when its owner is on this host) its process still runs."""
    if not claim.token or _age_s(claim.heartbeat_at) > STALE_AFTER_S:
        return False
    host, _, pid = claim.owner.removesuffix(SERVICE_OWNER).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another machine: the heartbeat is all there is to go by
    try:  # a pid reused by another process keeps the claim only until the heartbeat ages out
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _insert_missing(session: Session, model: type[Base], **values) -> None:
    """INSERT a row unless its key exists; racing sessions do not fail (the later one waits, then skips)."""
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(session.get_bind().dialect.name)
    if insert is not None:
        session.execute(insert(model).values(**values).on_conflict_do_nothing())
    elif session.get(model, tuple(values[column.name] for column in model.__mapper__.primary_key)) is None:
        session.add(model(**values))


SCHEMA_LOCK = 0x73776565705F31  # PostgreSQL advisory lock key: one schema creation at a time per database


@contextmanager
def schema_lock(engine: Engine) -> Iterator[None]:
    """Serialise schema creation between processes on PostgreSQL (no-op elsewhere).

    Two sweeps started together on a fresh database both ran CREATE TABLE / CREATE TYPE (ours through
    Alembic, Optuna's through its own create_all) and one of them failed on a duplicate key.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execute(text("select pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
        connection.commit()
        try:
            yield
        finally:
            connection.execute(text("select pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
            connection.commit()


def use_wal(engine: Engine) -> Engine:
    """SQLite only: write-ahead log and `synchronous=NORMAL` on every connection from now on.

    In the default rollback journal every commit (a trial start, each round, each Optuna ask / report / tell)
    waits for a full fsync, and a reader (`sweeper trials` during a sweep) blocks the writer. With WAL, readers
    never block, and a commit survives a process crash; a power cut may lose the last commits, never the
    database (a resumed sweep replays them). WAL needs a local disk: a store on a network share belongs in
    PostgreSQL (README, cluster).
    """
    if engine.dialect.name == "sqlite" and not event.contains(engine, "connect", _wal_pragmas):
        event.listen(engine, "connect", _wal_pragmas)
        engine.dispose()  # connections opened before this do not have the pragmas
    return engine


def _wal_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def backoff_s(attempt: int) -> float:
    """Seconds to wait before retry `attempt + 1` of a database operation: 0.5, 1, 2, 4, 8 (15.5 s in all)."""
    return min(0.5 * 2**attempt, 8)


def wait_before_retry(url: str, exc: SQLAlchemyError, attempt: int, what: str = "") -> None:
    """Say on stderr (a log warning) that the database failed and will be retried, then wait the backoff."""
    delay = backoff_s(attempt)
    log.warning("sweeper: database %s%s unavailable (%s); retry %d/%d in %.1f s", safe_url(url), what,
                _reason(exc), attempt + 1, RETRIES, delay)
    time.sleep(delay)


def _reason(exc: SQLAlchemyError) -> str:
    detail = str(getattr(exc, "orig", None) or exc).strip()
    return detail.splitlines()[0] if detail else type(exc).__name__


def _better(value: float, best: float | None, mode: str) -> bool:
    try:
        value = float(value)  # numpy scalars too: np.float32 is no `float`, and its NaN must not become best
    except (TypeError, ValueError):
        return False
    if math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _tied(value: float, best: float | None) -> bool:
    try:
        return best is not None and float(value) == best
    except (TypeError, ValueError):
        return False


def _json_scalar(value: Any) -> bool:
    """A metric value that strict JSON can hold (PostgreSQL's json type rejects NaN and Infinity)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (int, str, bool))


def _json_value(value: Any) -> bool:
    """A scalar `_json_scalar` keeps, or mappings and lists of them with None (a worker's TrainingArguments and
    LoraConfig, recorded with each round)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and (v is None or _json_value(v)) for k, v in value.items())
    if isinstance(value, list):
        return all(v is None or _json_value(v) for v in value)
    return _json_scalar(value)


def _storable(values: dict, nested: bool = True) -> dict:
    """What of a worker's values the store keeps: JSON only (PostgreSQL's json type refuses NaN); metrics are
    scalars, bookkeeping may hold mappings and lists (`nested`)."""
    keep = _json_value if nested else _json_scalar
    return {k: v for k, v in values.items() if keep(v)}


def ranked(trials: list[Trial], mode: str) -> list[Trial]:
    """Trials with an objective value, best first for `mode` (min | max); ties keep the earlier trial first."""
    return sorted([t for t in trials if t.best_value is not None], key=lambda t: t.best_value, reverse=mode == "max")


class TrialStore:
    """All reads and writes of sweep state. Construct with a SQLAlchemy URL."""

    def __init__(self, url: str):
        self.url = url
        self.retries: int | None = None  # retries of a failed connection; None: RETRIES
        if url.startswith("sqlite:///"):
            Path(make_url(url).database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = use_wal(create_engine(url, pool_pre_ping=True, future=True))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    # -- schema --------------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Create or migrate the schema to the newest revision (Alembic)."""
        from sweeper import migrations

        def locked():
            with schema_lock(self.engine):
                migrations.upgrade(self.engine)

        self._retrying(locked)

    def ensure_current(self) -> None:
        """Raise a StoreError that says what to run when the schema is missing or behind."""
        from sweeper import migrations

        state = self._retrying(lambda: migrations.schema_state(self.engine))
        if state != "current":
            raise StoreError(f"the store at {safe_url(self.url)} is {state}; run `sweeper db upgrade`")

    # -- sessions ------------------------------------------------------------------------------------
    def _retrying(self, work):
        retries = RETRIES if self.retries is None else self.retries
        for attempt in range(retries + 1):
            try:
                return work()
            except OperationalError as exc:  # connection lost or refused, database locked: worth a retry
                if attempt == retries:
                    raise StoreUnavailable(f"database {safe_url(self.url)} unavailable after {retries} retries: "
                                     f"{_reason(exc)}") from None
                wait_before_retry(self.url, exc, attempt)
            except SQLAlchemyError as exc:
                raise StoreError(f"database {safe_url(self.url)} refused the operation: {_reason(exc)}") from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            try:
                yield session
                session.commit()
            except SQLAlchemyError:
                session.rollback()
                raise

    def _write(self, work):
        """Run `work(session)` in one transaction, retrying on a lost connection."""

        def attempt():
            with self.session() as session:
                return work(session)

        return self._retrying(attempt)

    def _read(self, work):
        def attempt():
            with self._sessions() as session:
                return work(session)

        return self._retrying(attempt)

    # -- sweeps --------------------------------------------------------------------------------------
    def open_sweep(self, name: str, spec: dict, fingerprint: str, metric: str, mode: str) -> Sweep:
        """The sweep of this name, created if new; refused if it exists with a different spec."""

        def work(session: Session) -> Sweep:
            sweep = session.scalar(select(Sweep).where(Sweep.name == name))
            if sweep is None:
                sweep = Sweep(name=name, spec=spec, spec_fingerprint=fingerprint, objective_metric=metric,
                              objective_mode=mode)
                session.add(sweep)
            elif sweep.spec_fingerprint != fingerprint:
                raise StoreError(f"sweep {name!r} already exists with a different spec; give the new spec another "
                                 f"`name:` (or delete the old sweep with `sweeper delete {name}`)")
            session.flush()
            return sweep

        return self._write(work)

    def update_sweep(self, name: str, **fields) -> None:
        def work(session: Session):
            sweep = session.scalar(select(Sweep).where(Sweep.name == name))
            for key, value in fields.items():
                setattr(sweep, key, value)

        self._write(work)

    def get_sweep(self, name: str) -> Sweep | None:
        return self._read(lambda s: s.scalar(select(Sweep).where(Sweep.name == name)))

    def list_sweeps(self) -> list[Sweep]:
        return self._read(lambda s: list(s.scalars(select(Sweep).order_by(Sweep.id))))

    def delete_sweep(self, name: str) -> dict[str, int] | None:
        """Delete a sweep with its trials, rounds and promotions in one transaction (set-wise: no row is loaded);
        returns how many of each went, or None when no sweep has that name."""

        def work(session: Session) -> dict[str, int] | None:
            sweep_id = session.scalar(select(Sweep.id).where(Sweep.name == name))
            if sweep_id is None:
                return None
            trials = select(Trial.id).where(Trial.sweep_id == sweep_id)

            def gone(statement) -> int:
                return session.execute(statement.execution_options(synchronize_session=False)).rowcount

            counts = {"rounds": gone(delete(Round).where(Round.trial_id.in_(trials))),
                      "trials": gone(delete(Trial).where(Trial.sweep_id == sweep_id)),
                      "promotions": gone(delete(PromotionRecord).where(PromotionRecord.sweep_id == sweep_id))}
            gone(delete(Sweep).where(Sweep.id == sweep_id))
            gone(delete(Driver).where(Driver.sweep == name))  # the service's record of its driver goes with it
            return counts

        return self._write(work)

    # -- driver claims -------------------------------------------------------------------------------
    def claim(self, sweep: str, owner: str | None = None, token: str | None = None) -> str:
        """Make `owner` (default: this process) the sweep's one driver and return the claim's new token.

        Taken when free, stale (`claim_alive`), or handed over: `token` is the holder's (the service claims a
        sweep when it is submitted and passes the token to the driver it starts). Otherwise: ClaimHeld.
        """
        fresh = uuid.uuid4().hex

        def work(session: Session) -> str:
            _insert_missing(session, Claim, sweep=sweep, owner="", token="", claimed_at=EPOCH, heartbeat_at=EPOCH)
            held = session.scalar(select(Claim).where(Claim.sweep == sweep).with_for_update())
            if held.token and held.token != token and claim_alive(held):
                raise ClaimHeld(sweep, held)
            held.owner, held.token, held.claimed_at, held.heartbeat_at = owner or process_owner(), fresh, now(), now()
            return fresh

        return self._write(work)

    def heartbeat(self, sweep: str, token: str) -> bool | None:
        """Refresh the claim: False if it is no longer this token's, None if the database did not answer.

        One attempt, no retries: the next beat comes soon, and retries would add warnings to a sweep's own.
        """
        try:
            with self.session() as session:
                changed = session.execute(update(Claim).where(Claim.sweep == sweep, Claim.token == token)
                                          .values(heartbeat_at=now()))
                return changed.rowcount == 1
        except SQLAlchemyError:
            return None

    def release(self, sweep: str, token: str) -> None:
        """Give the claim up; one attempt (a claim left behind frees itself: its process is gone)."""
        try:
            with self.session() as session:
                session.execute(delete(Claim).where(Claim.sweep == sweep, Claim.token == token))
        except SQLAlchemyError:
            pass

    def driver_claim(self, sweep: str) -> Claim | None:
        return self._read(lambda s: s.scalar(select(Claim).where(Claim.sweep == sweep, Claim.token != "")))

    @contextmanager
    def driving(self, sweep: str, token: str | None = None) -> Iterator[str]:
        """Hold the sweep's claim for the block (ClaimHeld if another live driver has it), with heartbeats.

        A cancel asked through the store (`request_cancel`, by any service replica) stops the block the way Ctrl+C
        does (SIGINT: Tune saves its state); the sweep then ends `cancelled`."""
        token = self.claim(sweep, token=token or None)
        stop, cancelled = threading.Event(), threading.Event()
        beat = threading.Thread(target=self._beat, args=(sweep, token, stop), name="sweeper-claim", daemon=True)
        watch = threading.Thread(target=self._watch_cancel, args=(sweep, stop, cancelled), name="sweeper-cancel",
                                 daemon=True)
        beat.start()
        watch.start()
        try:
            yield token
        finally:
            stop.set()
            beat.join(timeout=5)
            watch.join(timeout=5)
            if cancelled.is_set():
                self.settle_cancel(sweep)
            self.release(sweep, token)

    def _watch_cancel(self, sweep: str, stop: threading.Event, cancelled: threading.Event) -> None:
        while not stop.wait(CANCEL_POLL_S):
            if self.cancel_requested(sweep):
                cancelled.set()
                os.kill(os.getpid(), signal.SIGINT)  # in the main thread, Tune stops as on Ctrl+C
                return

    def _beat(self, sweep: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            if self.heartbeat(sweep, token) is False:
                log.warning("sweeper: sweep %r: another driver took this driver's claim over (no heartbeat reached "
                            "the database for %.0f s)", sweep, STALE_AFTER_S)
                return

    # -- sweep drivers (the service's) ---------------------------------------------------------------
    def record_driver(self, sweep: str, spec_path: str, kind: str, driver_id: str, restarts: int = 0,
                      role: str = "run") -> None:
        """The driver just started for `sweep`; a new start clears an earlier cancel request."""

        def work(session: Session) -> None:
            _insert_missing(session, Driver, sweep=sweep, role=role, spec_path="", kind=kind, driver_id="",
                            restarts=0, cancel_requested=False, launched_at=now())
            session.execute(update(Driver).where(Driver.sweep == sweep, Driver.role == role).values(
                spec_path=spec_path, kind=kind, driver_id=driver_id, restarts=restarts, cancel_requested=False,
                launched_at=now()))

        self._write(work)

    def driver(self, sweep: str, role: str = "run") -> Driver | None:
        return self._read(lambda s: s.get(Driver, (sweep, role)))

    def drivers(self, role: str = "run") -> list[Driver]:
        return self._read(lambda s: list(s.scalars(select(Driver).where(Driver.role == role).order_by(Driver.sweep))))

    def request_cancel(self, sweep: str) -> bool:
        """Ask the sweep's driver to stop; False when no service started one for it."""
        return self._write(lambda s: s.execute(update(Driver).where(Driver.sweep == sweep, Driver.role == "run")
                                               .values(cancel_requested=True)).rowcount == 1)

    def cancel_requested(self, sweep: str) -> bool:
        """One attempt: a driver asks again in a moment, and an outage is its own story."""
        try:
            with self._sessions() as session:
                return bool(session.scalar(select(Driver.cancel_requested)
                                           .where(Driver.sweep == sweep, Driver.role == "run")))
        except SQLAlchemyError:
            return False

    def settle_cancel(self, sweep: str, message: str = "cancelled through the API") -> None:
        """The cancelled sweep's driver is gone: record the sweep `cancelled` (unless it completed first) and clear
        the request, so a later run of the sweep is not stopped by it."""

        def work(session: Session) -> None:
            row = session.scalar(select(Sweep).where(Sweep.name == sweep))
            if row is not None and row.status != "completed":
                row.status, row.message = "cancelled", message
            session.execute(update(Driver).where(Driver.sweep == sweep, Driver.role == "run")
                            .values(cancel_requested=False))

        self._write(work)

    def shown_status(self, sweep: Sweep) -> tuple[str, str]:
        """Status and message as users should read them: `queued` or `running` with no live driver behind it is
        `interrupted` (its driver was killed, or its machine went away, before it could say so)."""
        if sweep.status not in ("queued", "running"):
            return sweep.status, sweep.message
        claim = self.driver_claim(sweep.name)
        if claim is not None and claim_alive(claim):
            return sweep.status, sweep.message
        last = f", last heartbeat {_utc(claim.heartbeat_at):%Y-%m-%d %H:%M:%S} UTC from {claim.owner}" if claim else ""
        return "interrupted", f"recorded {sweep.status}, but no driver is alive{last}; `sweeper run` again resumes it"

    # -- trials --------------------------------------------------------------------------------------
    def _trial(self, session: Session, sweep_name: str, key: str) -> Trial | None:
        return session.scalar(select(Trial).join(Sweep).where(Sweep.name == sweep_name, Trial.trial_key == key))

    def trial_started(self, sweep_name: str, key: str, params: dict) -> None:
        """Record a trial start; a restart of a known trial (retry or resume) counts as a retry."""

        def work(session: Session):
            trial = self._trial(session, sweep_name, key)
            if trial is None:
                sweep_id = session.scalar(select(Sweep.id).where(Sweep.name == sweep_name))
                session.add(Trial(sweep_id=sweep_id, trial_key=key, params=params))
            elif trial.status != "running" or trial.rounds:
                trial.retries += 1
                trial.status, trial.finished_at = "running", None

        self._write(work)

    def round_reported(self, sweep_name: str, key: str, record: RoundRecord, checkpoint: str = "",
                       wall_time_s: float | None = None) -> None:
        """Record one round: the worker's record, its metrics and bookkeeping kept apart, and the checkpoint it
        reported, already persisted by the worker (replays keep the round's recorded checkpoint). `wall_time_s`:
        the trial's running time so far, as Tune counts it."""
        metrics, bookkeeping, number = record.metrics, record.bookkeeping, int(record.round)

        def work(session: Session):
            trial = self._trial(session, sweep_name, key)
            sweep = trial.sweep
            row = session.scalar(select(Round).where(Round.trial_id == trial.id, Round.round == number))
            if row is None:
                row = Round(trial_id=trial.id, round=number, checkpoint="")
                session.add(row)
            row.metrics, row.bookkeeping = _storable(metrics, nested=False), _storable(bookkeeping)
            row.eval_loss = metrics.get("eval_loss")
            row.checkpoint = checkpoint or row.checkpoint
            value = metrics.get(sweep.objective_metric)
            if _better(value, trial.best_value, sweep.objective_mode):
                trial.best_value, trial.best_round = float(value), number
            elif trial.best_round is not None and number > trial.best_round and _tied(value, trial.best_value):
                trial.best_round = number  # Ray keeps the LATER of tied checkpoints (num_to_keep): point at it
            trial.rounds = max(trial.rounds, number)
            trial.device = str(bookkeeping.get("device", trial.device))
            trial.node = str(bookkeeping.get("node", trial.node))
            trial.examples_seen = int(bookkeeping.get("examples_seen", trial.examples_seen))
            trial.tokens_seen = int(bookkeeping.get("tokens_seen", trial.tokens_seen))
            trial.wall_time_s = trial.wall_time_s if wall_time_s is None else float(wall_time_s)

        self._write(work)

    def best_checkpoint(self, trial: Trial) -> str:
        """The checkpoint of the trial's best round ('' if Ray has not persisted it)."""
        row = self._read(lambda s: s.scalar(select(Round).where(Round.trial_id == trial.id, Round.round == trial.best_round)))
        return row.checkpoint if row else ""

    def trial_finished(self, sweep_name: str, key: str, status: str, stop_reason: str = "", error: str = "",
                       params: dict | None = None) -> None:
        """Record how a trial ended; one that failed before it ever started (Tune could not place or start it)
        is recorded then, with `params`, so the store counts every trial the study does."""

        def work(session: Session):
            trial = self._trial(session, sweep_name, key)
            if trial is None:
                sweep_id = session.scalar(select(Sweep.id).where(Sweep.name == sweep_name))
                trial = Trial(sweep_id=sweep_id, trial_key=key, params=params or {})
                session.add(trial)
            trial.status, trial.stop_reason, trial.error, trial.finished_at = status, stop_reason, error[-4000:], now()

        self._write(work)

    def mark_unfinished(self, sweep_name: str, status: str, reason: str) -> int:
        """Mark trials still 'running' (their driver died) with a status and reason; returns how many."""

        def work(session: Session) -> int:
            trials = session.scalars(select(Trial).join(Sweep).where(Sweep.name == sweep_name, Trial.status == "running"))
            count = 0
            for trial in trials:
                trial.status, trial.stop_reason, count = status, reason, count + 1
            return count

        return self._write(work)

    def trial(self, sweep_name: str, key: str) -> Trial | None:
        return self._read(lambda s: self._trial(s, sweep_name, key))

    def trial_counts(self, sweep_name: str) -> dict[str, int]:
        """How many trials of the sweep are in each status."""
        return self._read(lambda s: dict(s.execute(
            select(Trial.status, func.count()).join(Trial.sweep).where(Sweep.name == sweep_name)
            .group_by(Trial.status)).all()))

    def trial_page(self, sweep_name: str, status: str | None = None, offset: int = 0,
                   limit: int = 50) -> tuple[int, list[Trial]]:
        """(how many trials match, the `limit` of them after `offset`), in trial order: paged in SQL."""
        where = [Sweep.name == sweep_name] + ([Trial.status == status] if status else [])

        def work(session: Session):
            total = session.scalar(select(func.count()).select_from(Trial).join(Trial.sweep).where(*where))
            page = session.scalars(select(Trial).join(Trial.sweep).where(*where).order_by(Trial.id)
                                   .offset(offset).limit(limit))
            return total, list(page)

        return self._read(work)

    def trials(self, sweep_name: str) -> list[Trial]:
        return self._read(lambda s: list(s.scalars(select(Trial).join(Sweep).where(Sweep.name == sweep_name).order_by(Trial.id))))

    def rounds(self, sweep_name: str) -> dict[str, list[Round]]:
        """Per-round rows of every trial of a sweep, keyed by trial key."""

        def work(session: Session):
            rows = session.execute(select(Trial.trial_key, Round).join(Round.trial).join(Trial.sweep)
                                   .where(Sweep.name == sweep_name).order_by(Trial.id, Round.round))
            out: dict[str, list[Round]] = {}
            for key, row in rows:
                out.setdefault(key, []).append(row)
            return out

        return self._read(work)

    def trial_rounds(self, sweep_name: str, key: str) -> list[Round]:
        """Per-round rows of one trial, in round order."""
        return self._read(lambda s: list(s.scalars(
            select(Round).join(Round.trial).join(Trial.sweep)
            .where(Sweep.name == sweep_name, Trial.trial_key == key).order_by(Round.round))))

    def best_round_metrics(self, sweep_name: str, key: str | None = None) -> dict[str, dict]:
        """Each trial's holdout metrics at its best round (only trial `key`'s if given), keyed by trial key: one
        query, not every round."""
        at_best = (Round.trial_id == Trial.id) & (Round.round == Trial.best_round)
        where = [Sweep.name == sweep_name] + ([Trial.trial_key == key] if key else [])
        return self._read(lambda s: dict(s.execute(
            select(Trial.trial_key, Round.metrics).join(Round, at_best).join(Trial.sweep).where(*where)).all()))

    def best_trial(self, sweep_name: str) -> Trial | None:
        """The trial with the best value of the objective at any of its rounds (not its last round); ties: the
        earlier trial. One row read, whatever the sweep's size."""

        def work(session: Session) -> Trial | None:
            mode = session.scalar(select(Sweep.objective_mode).where(Sweep.name == sweep_name))
            order = Trial.best_value.desc() if mode == "max" else Trial.best_value.asc()
            return session.scalar(select(Trial).join(Trial.sweep).where(Sweep.name == sweep_name,
                                                                         Trial.best_value.is_not(None))
                                  .order_by(order, Trial.id).limit(1))

        return self._read(work)

    def ranked_trials(self, sweep_name: str) -> list[Trial]:
        """Trials with an objective value, best first (ties: the earlier trial first)."""
        sweep = self.get_sweep(sweep_name)
        return ranked(self.trials(sweep_name), sweep.objective_mode) if sweep else []

    # -- promotions ----------------------------------------------------------------------------------
    def record_promotion(self, sweep_name: str, trial_key: str, promoted: bool, split: str, result: dict,
                         runner_up: str = "", export_path: str = "") -> None:
        def work(session: Session):
            sweep_id = session.scalar(select(Sweep.id).where(Sweep.name == sweep_name))
            if sweep_id is None:
                raise StoreError(f"no sweep named {sweep_name!r} in {safe_url(self.url)}")
            session.add(PromotionRecord(sweep_id=sweep_id, trial_key=trial_key, promoted=promoted, split=split,
                                        runner_up=runner_up, result=result, export_path=export_path))

        self._write(work)

    def latest_promotion(self, sweep_name: str) -> PromotionRecord | None:
        return self._read(lambda s: s.scalar(select(PromotionRecord).join(Sweep, PromotionRecord.sweep_id == Sweep.id)
                                             .where(Sweep.name == sweep_name).order_by(PromotionRecord.id.desc())
                                             .limit(1)))
