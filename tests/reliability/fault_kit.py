"""What the fault tests share: a short deterministic spec, polling, the store's rows, a flaky PostgreSQL proxy.

Every process a test harms is one it started: a trial worker is found by the `pid` its own rounds report
and checked to descend from the test's private Ray (its RAY_TMPDIR); PostgreSQL itself is never touched,
only a proxy in front of it that the test owns.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import psutil
from helpers import free_port, ray_processes, small_spec
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

# One searched parameter, the rest fixed: 96 train rows / batch 16 = 6 steps an epoch; 2 rounds an epoch of
# 3 steps each; 2 epochs = 4 rounds a trial by default. No ASHA and a long patience, so a trial runs every round.
SPACE = {"params": {"learning_rate": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}}}
FIXED = {"batch_size": 16, "num_epochs": 2, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
         "weight_decay": 0.0, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0}


def fault_spec(tmp_path: Path, name: str = "fault-sweep", trials: int = 2, max_concurrent: int = 1,
               max_failures: int = 2, evals_per_epoch: int = 2, epochs: int = 2, **overrides) -> Path:
    """`trials` trials of `epochs * evals_per_epoch` rounds each (4 by default)."""
    return small_spec(tmp_path, name=name, search_space=SPACE, fixed={**FIXED, "num_epochs": epochs},
                      budget={"trials": trials, "max_concurrent": max_concurrent, "max_failures": max_failures},
                      scheduler={"type": "none", "evals_per_epoch": evals_per_epoch},
                      early_stopping={"patience": 20, "min_delta": 0.0}, **overrides)


def cli_log(tmp_path: Path) -> str:
    """What the CLI processes `start_cli` started in `tmp_path` printed (for failure messages)."""
    return "\n".join(p.read_text(errors="replace")[-6000:] for p in sorted(tmp_path.glob("cli-*.log")))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2):
    """Poll until `predicate()` returns something truthy (returned); fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (sqlite3.OperationalError, DBAPIError, OSError):
            value = None  # the store or its schema is not there yet
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Rows:
    """Read-only SQL on a sweep's store (SQLite file or PostgreSQL URL), outside the sweep's process."""

    def __init__(self, where: Path | str):
        self.where = where

    def __call__(self, sql: str, **params) -> list[tuple]:
        if isinstance(self.where, Path):
            if not self.where.exists():
                return []
            with sqlite3.connect(f"file:{self.where}?mode=ro", uri=True, timeout=10) as db:
                return db.execute(sql, params).fetchall()
        engine = create_engine(self.where)
        try:
            with engine.connect() as connection:
                return [tuple(r) for r in connection.execute(text(sql), params)]
        finally:
            engine.dispose()

    def rounds(self, sweep: str) -> list[dict]:
        """Every round row of the sweep: trial key, round, eval_loss, checkpoint, when it was recorded, and the
        worker's record (holdout metrics, bookkeeping: pid, node, memory, ...)."""
        rows = self("select t.trial_key, r.round, r.eval_loss, r.checkpoint, r.recorded_at, r.metrics, r.bookkeeping "
                    "from sweeper_rounds r join sweeper_trials t on t.id = r.trial_id "
                    "join sweeper_sweeps s on s.id = t.sweep_id where s.name = :name order by t.id, r.round", name=sweep)
        return [{"trial": k, "round": n, "eval_loss": loss, "checkpoint": ckpt, "recorded_at": at,
                 "metrics": _json(m), "bookkeeping": _json(b)} for k, n, loss, ckpt, at, m, b in rows]

    def trials(self, sweep: str) -> list[dict]:
        rows = self("select t.trial_key, t.status, t.stop_reason, t.rounds, t.retries, t.node, t.best_round "
                    "from sweeper_trials t join sweeper_sweeps s on s.id = t.sweep_id where s.name = :name "
                    "order by t.id", name=sweep)
        keys = ("key", "status", "stop_reason", "rounds", "retries", "node", "best_round")
        return [dict(zip(keys, row)) for row in rows]

    def sweep_status(self, sweep: str) -> tuple[str, str] | None:
        rows = self("select status, message from sweeper_sweeps where name = :name", name=sweep)
        return tuple(rows[0]) if rows else None

    def study_states(self, sweep: str) -> list[str]:
        return sorted(s for (s,) in self("select t.state from trials t join studies s on s.study_id = t.study_id "
                                         "where s.study_name = :name", name=sweep))


def _json(value) -> dict:
    return value if isinstance(value, dict) else json.loads(value)  # SQLite hands JSON back as text


def registered_round(rows: Rows, sweep: str) -> dict | None:
    """The newest round whose checkpoint Tune has surely registered: a checkpointed round of a trial that has
    recorded a later round. The store records a round's checkpoint as its result arrives, before Tune's save of
    it is processed, and Tune fetches a trial's next result only after that (a worker killed in between is
    retried from the round before: CI saw a kill right after round 1 restart the trial from zero)."""
    rounds = rows.rounds(sweep)
    last = {}
    for r in rounds:
        last[r["trial"]] = max(last.get(r["trial"], 0), r["round"])
    done = [r for r in rounds if r["checkpoint"] and r["round"] < last[r["trial"]]]
    return max(done, key=lambda r: r["recorded_at"]) if done else None


def our_ray_worker(pid: int, tmp_path: Path) -> psutil.Process:
    """The process `pid`, after checking it is a worker of the Ray instance this test started."""
    proc = psutil.Process(pid)
    ours = {p.pid for p in ray_processes(tmp_path)}
    assert ours & {p.pid for p in proc.parents()}, f"pid {pid} ({proc.name()}) is not under this test's Ray"
    assert proc.name().startswith("ray::"), proc.name()
    return proc


class PostgresProxy:
    """A TCP proxy on 127.0.0.1 in front of PostgreSQL that the test can take down and bring back.

    `down()` cuts every open connection and closes the listening socket, so new connections are refused
    (ECONNREFUSED) until `up()` listens again on the same port. The database server is never touched.
    """

    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5432)):
        self.upstream = upstream
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.accepted = 0
        self.up()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in open_sockets:
            _close(sock)

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            client.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    _close(client)
                    _close(server)
                    return
                self._sockets |= {client, server}
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                _close(sock)
                with self._lock:
                    self._sockets.discard(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
