"""Run history: every session appends its headline figures to a SQLite database, for trends over runs.

One row in `runs` per session and one row in `figures` per (model × board) result, written in a single
`BEGIN IMMEDIATE` transaction, so a reader never sees half a run. The database is in WAL mode with a busy
timeout, so several sessions (one per board, pytest-xdist workers, CI jobs on one runner) can append at
the same time: writers queue instead of failing. A history that is corrupt, not ours or locked for longer
than the timeout raises HistoryError; the plugin turns that into one warning and still writes the run's
own reports, because history is a convenience and the run's verdict must not depend on it.
"""

from __future__ import annotations

import datetime as _dt
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ..errors import ReportError
from ..bench.results import Result

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 20.0
FIGURES = ("accuracy", "macro_f1", "latency_p50_us", "arena_used_bytes", "bit_exact")

_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_at TEXT NOT NULL,
    harness_version TEXT,
    git_commit TEXT,
    git_dirty INTEGER,
    host TEXT,
    partial INTEGER NOT NULL,
    exitstatus INTEGER
);
CREATE TABLE IF NOT EXISTS figures (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    profile TEXT NOT NULL,
    status TEXT NOT NULL,
    partial INTEGER NOT NULL,
    beats INTEGER,
    records TEXT,
    accuracy REAL,
    macro_f1 REAL,
    latency_p50_us REAL,
    latency_source TEXT,
    arena_used_bytes INTEGER,
    model_bytes INTEGER,
    bit_exact INTEGER,
    mismatching_beats INTEGER,
    model_sha256 TEXT,
    beat_set TEXT
);
CREATE INDEX IF NOT EXISTS figures_by_pair ON figures(model, profile, run_id);
"""


class HistoryError(ReportError):
    code = "HIL620"


def append(path: str | os.PathLike, results: Sequence[Result], *, manifest: dict | None = None,
           partial: bool = False, exitstatus: int | None = None) -> int:
    """Append one run (its results) to the history at `path` in one transaction; returns the run id."""
    path = Path(path)
    manifest = manifest or {}
    harness = manifest.get("harness") or {}
    host = (manifest.get("host") or {}).get("name")
    with _connect(path, create=True) as db:
        try:
            db.execute("BEGIN IMMEDIATE")  # take the write lock now: concurrent writers queue here
            _ensure_schema(db, path)
            cursor = db.execute(
                "INSERT INTO runs (recorded_at, harness_version, git_commit, git_dirty, host, partial, exitstatus)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (_now(), harness.get("version"), harness.get("git_commit"), _flag(harness.get("git_dirty")), host,
                 int(bool(partial or any(r.partial for r in results))), exitstatus))
            run_id = int(cursor.lastrowid)
            db.executemany(
                "INSERT INTO figures (run_id, model, device, profile, status, partial, beats, records, accuracy,"
                " macro_f1, latency_p50_us, latency_source, arena_used_bytes, model_bytes, bit_exact,"
                " mismatching_beats, model_sha256, beat_set) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_row(run_id, result) for result in results])
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(db)
            raise _error(path, exc) from None
    return run_id


def load(path: str | os.PathLike) -> list[dict]:
    """Every figures row joined with its run, oldest run first; [] when there is no history yet."""
    path = Path(path)
    if not path.exists():
        return []
    with _connect(path, create=False) as db:
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] == 0 and not _has_tables(db):
                return []
            _check_version(db, path)
            db.row_factory = sqlite3.Row
            rows = db.execute(
                "SELECT f.*, r.recorded_at, r.git_commit, r.git_dirty, r.partial AS run_partial"
                " FROM figures f JOIN runs r ON r.id = f.run_id ORDER BY f.run_id, f.model, f.device").fetchall()
        except sqlite3.Error as exc:
            raise _error(path, exc) from None
    return [dict(row) for row in rows]


def trends(rows: Sequence[dict]) -> dict[tuple[str, str], list[dict]]:
    """History rows grouped by (model, profile), each list in run order."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["profile"]), []).append(row)
    return grouped


# -- internals ---------------------------------------------------------------------------------------------
class _connect:
    """A connection in autocommit mode (transactions are explicit), WAL, busy timeout; closed on exit."""

    def __init__(self, path: Path, *, create: bool):
        self.path = path
        self.create = create
        self.db: sqlite3.Connection | None = None

    def __enter__(self) -> sqlite3.Connection:
        try:
            if self.create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            else:
                db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                     timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.db = db
            if self.create:
                # WAL lets readers and one writer work at once; the mode is stored in the file.
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        except (sqlite3.Error, OSError) as exc:
            if self.db is not None:
                self.db.close()
            raise _error(self.path, exc) from None
        return db

    def __exit__(self, *exc) -> bool:
        if self.db is not None:
            self.db.close()
        return False


def _ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0:
        if _has_tables(db) and not _has_ours(db):
            raise HistoryError(f"history {path} is a SQLite database of something else",
                               "pass --history with another path, or delete the file", code="HIL620")
        for statement in _TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    else:
        _check_version(db, path)


def _check_version(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise HistoryError(f"history {path} has schema {version}, this harness writes {SCHEMA_VERSION}",
                           "pass --history with a new path, or move the old file away", code="HIL620")


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] > 0


def _has_ours(db: sqlite3.Connection) -> bool:
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {"runs", "figures"} <= names


def _rollback(db: sqlite3.Connection) -> None:
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _error(path: Path, exc: BaseException) -> HistoryError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return HistoryError(f"history {path} stayed locked for {BUSY_TIMEOUT_S:.0f} s ({text})",
                            "another run holds it; this run's figures are not in the history, its reports are "
                            "written; rerun `make report` later or pass --history with another path",
                            code="HIL621")
    return HistoryError(f"history {path} is unreadable: {text}",
                        "this run's reports are written without it; move the file away (a new one is started) "
                        "or pass --history with another path", code="HIL620")


def _row(run_id: int, result: Result) -> tuple:
    beat_set = (result.provenance or {}).get("beat_set") or {}
    records = (result.provenance or {}).get("records") or []
    return (run_id, result.model, result.device, result.profile, result.status, int(bool(result.partial)),
            (result.beats or {}).get("verified"), ",".join(str(r) for r in records), result.accuracy_value,
            result.macro_f1_value, result.latency_us("median"), result.latency_source, result.arena_used_bytes,
            (result.memory or {}).get("model_bytes"), _flag(result.is_bit_exact),
            (result.bit_exact or {}).get("mismatching_beats"), (result.provenance or {}).get("model_sha256"),
            beat_set.get("fingerprint") if isinstance(beat_set, dict) else None)


def _flag(value) -> int | None:
    return None if value is None else int(bool(value))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
