"""SQLite storage for the local Freeplay server (stdlib `sqlite3`, one locked connection)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["MEMORY", "Store"]

#: `db_path` value for a private in-memory database.
MEMORY = ":memory:"

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    custom_metadata TEXT NOT NULL DEFAULT '{}',
    first_seen REAL NOT NULL,
    last_activity REAL NOT NULL,
    deleted_at REAL
);
CREATE TABLE IF NOT EXISTS completions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    parent_id TEXT,
    messages TEXT NOT NULL,
    inputs TEXT,
    model TEXT,
    provider TEXT,
    start_time REAL,
    end_time REAL,
    call_info TEXT,
    prompt_info TEXT,
    eval_results TEXT NOT NULL DEFAULT '{}',
    payload TEXT NOT NULL,
    updates TEXT NOT NULL DEFAULT '[]',
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS completions_session ON completions (session_id, seq);
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    parent_id TEXT,
    input TEXT,
    output TEXT,
    name TEXT,
    agent_name TEXT,
    kind TEXT,
    custom_metadata TEXT NOT NULL DEFAULT '{}',
    eval_results TEXT NOT NULL DEFAULT '{}',
    start_time TEXT,
    end_time TEXT,
    payload TEXT,
    updates TEXT NOT NULL DEFAULT '[]',
    recorded INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_session ON traces (session_id, seq);
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    data TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_session ON spans (session_id, seq);
CREATE TABLE IF NOT EXISTS feedback (
    kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, target_id)
);
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks: the text ones
        parts = [b.get("text") for b in content if isinstance(b, Mapping)]
        text = " ".join(p for p in parts if isinstance(p, str))
        return text or None
    return None


def _first_user_message(messages: Any) -> str | None:
    """The text of the first user message of a session's first completion."""
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _text(message.get("content"))
    return None


class Store:
    """Everything the server received. Every method is safe to call from any thread.

    Updates that arrive before the thing they update (trace PATCHes, feedback) are kept
    and shown once it arrives, since background senders do not guarantee the order.
    """

    def __init__(self, path: str = MEMORY) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------

    def _touch_session(
        self,
        db: sqlite3.Connection,
        project_id: str,
        session_id: str,
        now: float,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        row = db.execute(
            "SELECT custom_metadata FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO sessions (id, project_id, custom_metadata, first_seen, last_activity)"
                " VALUES (?, ?, ?, ?, ?)",
                (session_id, project_id, _dumps(dict(metadata or {})), now, now),
            )
            return
        merged = _as_dict(_loads(row["custom_metadata"]))
        merged.update(metadata or {})
        db.execute(
            "UPDATE sessions SET custom_metadata = ?, last_activity = ?, deleted_at = NULL"
            " WHERE id = ?",
            (_dumps(merged), now, session_id),
        )

    def record_completion(
        self,
        project_id: str,
        session_id: str,
        completion_id: str,
        body: Mapping[str, Any],
        *,
        template_name: str | None = None,
    ) -> bool:
        """Store a completion; False (and nothing changed) when its ID is already stored.

        `template_name` (looked up from `prompt_info`) is kept in the stored `prompt_info`.
        """
        now = time.time()
        prompt_info = body.get("prompt_info")
        if isinstance(prompt_info, Mapping) and template_name is not None:
            prompt_info = {**prompt_info, "template_name": template_name}
        call_info = body.get("call_info")
        call = _as_dict(call_info)
        metadata = _as_dict(_as_dict(body.get("session_info")).get("custom_metadata"))
        metadata.update(_as_dict(body.get("custom_metadata")))
        with self._tx() as db:
            if db.execute("SELECT 1 FROM completions WHERE id = ?", (completion_id,)).fetchone():
                return False
            self._touch_session(db, project_id, session_id, now, metadata)
            db.execute(
                "INSERT INTO completions (id, session_id, project_id, parent_id, messages,"
                " inputs, model, provider, start_time, end_time, call_info, prompt_info,"
                " eval_results, payload, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    completion_id,
                    session_id,
                    project_id,
                    _as_text(body.get("parent_id")),
                    _dumps(body.get("messages") or []),
                    _dumps(body.get("inputs")),
                    _as_text(call.get("model")),
                    _as_text(call.get("provider")),
                    _as_float(call.get("start_time")),
                    _as_float(call.get("end_time")),
                    _dumps(call_info),
                    _dumps(prompt_info),
                    _dumps(_as_dict(body.get("eval_results"))),
                    _dumps(dict(body)),
                    now,
                ),
            )
        return True

    def update_completion(self, completion_id: str, body: Mapping[str, Any]) -> bool:
        """Append `new_messages` and merge `eval_results`; False when the ID is unknown."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT session_id, project_id, messages, eval_results, updates"
                " FROM completions WHERE id = ?",
                (completion_id,),
            ).fetchone()
            if row is None:
                return False
            messages = list(_loads(row["messages"]) or [])
            new_messages = body.get("new_messages")
            if isinstance(new_messages, list):
                messages.extend(new_messages)
            evals = _as_dict(_loads(row["eval_results"]))
            evals.update(_as_dict(body.get("eval_results")))
            updates = list(_loads(row["updates"]) or [])
            updates.append({"received_at": now, "payload": dict(body)})
            db.execute(
                "UPDATE completions SET messages = ?, eval_results = ?, updates = ? WHERE id = ?",
                (_dumps(messages), _dumps(evals), _dumps(updates), completion_id),
            )
            self._touch_session(db, row["project_id"], row["session_id"], now)
        return True

    def _trace_row(
        self, db: sqlite3.Connection, project_id: str, session_id: str, trace_id: str, now: float
    ) -> sqlite3.Row:
        row = db.execute("SELECT * FROM traces WHERE id = ?", (trace_id,)).fetchone()
        if row is None:
            db.execute(
                "INSERT INTO traces (id, session_id, project_id, received_at) VALUES (?, ?, ?, ?)",
                (trace_id, session_id, project_id, now),
            )
            row = db.execute("SELECT * FROM traces WHERE id = ?", (trace_id,)).fetchone()
        assert isinstance(row, sqlite3.Row)
        return row

    def record_trace(
        self, project_id: str, session_id: str, trace_id: str, body: Mapping[str, Any]
    ) -> bool:
        """Store a trace, or replace it; False when it was already recorded."""
        now = time.time()
        with self._tx() as db:
            row = self._trace_row(db, project_id, session_id, trace_id, now)
            again = bool(row["recorded"])
            if again:
                # Create or update: a second POST replaces what the first one recorded.
                db.execute(
                    "UPDATE traces SET output = NULL, custom_metadata = '{}',"
                    " eval_results = '{}' WHERE id = ?",
                    (trace_id,),
                )
                row = self._trace_row(db, project_id, session_id, trace_id, now)
            self._touch_session(db, project_id, session_id, now)
            # Metadata and eval results PATCHed before the trace arrived win over the record.
            metadata = _as_dict(body.get("custom_metadata"))
            metadata.update(_as_dict(_loads(row["custom_metadata"])))
            evals = _as_dict(body.get("eval_results"))
            evals.update(_as_dict(_loads(row["eval_results"])))
            output = _dumps(body.get("output"))
            db.execute(
                "UPDATE traces SET session_id = ?, project_id = ?, parent_id = ?, input = ?,"
                " output = ?, name = ?, agent_name = ?, kind = ?, custom_metadata = ?,"
                " eval_results = ?, start_time = ?, end_time = ?, payload = ?, recorded = 1,"
                " received_at = ? WHERE id = ?",
                (
                    session_id,
                    project_id,
                    _as_text(body.get("parent_id")),
                    _dumps(body.get("input")),
                    output,
                    _as_text(body.get("name")),
                    _as_text(body.get("agent_name")),
                    _as_text(body.get("kind")),
                    _dumps(metadata),
                    _dumps(evals),
                    _as_text(body.get("start_time")),
                    _as_text(body.get("end_time")),
                    _dumps(dict(body)),
                    now,
                    trace_id,
                ),
            )
        return not again

    def update_trace(
        self, project_id: str, session_id: str, trace_id: str, body: Mapping[str, Any]
    ) -> None:
        """Apply a trace PATCH (output, metadata, feedback, eval_results)."""
        now = time.time()
        with self._tx() as db:
            row = self._trace_row(db, project_id, session_id, trace_id, now)
            metadata = _as_dict(_loads(row["custom_metadata"]))
            metadata.update(_as_dict(body.get("metadata")))
            evals = _as_dict(_loads(row["eval_results"]))
            evals.update(_as_dict(body.get("eval_results")))
            output = _dumps(body["output"]) if body.get("output") is not None else row["output"]
            updates = list(_loads(row["updates"]) or [])
            updates.append({"received_at": now, "payload": dict(body)})
            db.execute(
                "UPDATE traces SET output = ?, custom_metadata = ?, eval_results = ?, updates = ?"
                " WHERE id = ?",
                (output, _dumps(metadata), _dumps(evals), _dumps(updates), trace_id),
            )
            feedback = _as_dict(body.get("feedback"))
            if feedback:
                self._merge_feedback(db, "trace", project_id, trace_id, feedback, now)
            self._touch_session(db, project_id, row["session_id"], now)

    def merge_trace_metadata(
        self, project_id: str, session_id: str, trace_id: str, metadata: Mapping[str, Any]
    ) -> None:
        self.update_trace(project_id, session_id, trace_id, {"metadata": dict(metadata)})

    def merge_session_metadata(
        self, project_id: str, session_id: str, metadata: Mapping[str, Any]
    ) -> None:
        with self._tx() as db:
            self._touch_session(db, project_id, session_id, time.time(), metadata)

    def _merge_feedback(
        self,
        db: sqlite3.Connection,
        kind: str,
        project_id: str,
        target_id: str,
        feedback: Mapping[str, Any],
        now: float,
    ) -> None:
        row = db.execute(
            "SELECT data FROM feedback WHERE kind = ? AND target_id = ?", (kind, target_id)
        ).fetchone()
        data = _as_dict(_loads(row["data"])) if row is not None else {}
        data.update(feedback)
        db.execute(
            "INSERT INTO feedback (kind, target_id, project_id, data, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, target_id)"
            " DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (kind, target_id, project_id, _dumps(data), now),
        )

    def add_feedback(
        self, kind: str, project_id: str, target_id: str, feedback: Mapping[str, Any]
    ) -> None:
        """Merge customer feedback for a completion or a trace (kind "completion"/"trace")."""
        now = time.time()
        table = "completions" if kind == "completion" else "traces"
        with self._tx() as db:
            self._merge_feedback(db, kind, project_id, target_id, feedback, now)
            row = db.execute(
                f"SELECT project_id, session_id FROM {table} WHERE id = ?", (target_id,)
            ).fetchone()
            if row is not None:
                self._touch_session(db, row["project_id"], row["session_id"], now)

    def delete_session(self, project_id: str, session_id: str) -> None:
        """Delete everything recorded in the session and keep a tombstone for queries."""
        now = time.time()
        with self._tx() as db:
            for kind, table in (("completion", "completions"), ("trace", "traces")):
                db.execute(
                    f"DELETE FROM feedback WHERE kind = ? AND target_id IN"
                    f" (SELECT id FROM {table} WHERE session_id = ?)",
                    (kind, session_id),
                )
                db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            db.execute(
                "INSERT INTO sessions (id, project_id, first_seen, last_activity, deleted_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " custom_metadata = '{}', last_activity = excluded.last_activity,"
                " deleted_at = excluded.deleted_at",
                (session_id, project_id, now, now, now),
            )

    def add_spans(self, project_id: str, spans: list[dict[str, Any]], no_session: str) -> None:
        """Store OTLP spans (see `_otlp`), each under its session or `no_session`."""
        now = time.time()
        with self._tx() as db:
            for session_id in dict.fromkeys(s["session_id"] for s in spans if s["session_id"]):
                self._touch_session(db, project_id, session_id, now)
            db.executemany(
                "INSERT INTO spans (session_id, project_id, trace_id, span_id, data,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        span["session_id"] or no_session,
                        project_id,
                        span["trace_id"],
                        span["span_id"],
                        _dumps({**span, "project_id": project_id, "received_at": now}),
                        now,
                    )
                    for span in spans
                ],
            )

    def spans(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Stored spans in arrival order, of one session (or `no_session` key) or of all."""
        if session_id is None:
            rows = self._query("SELECT data FROM spans ORDER BY seq")
        else:
            rows = self._query(
                "SELECT data FROM spans WHERE session_id = ? ORDER BY seq", (session_id,)
            )
        return [_as_dict(_loads(row["data"])) for row in rows]

    def clear(self) -> None:
        with self._tx() as db:
            for table in ("sessions", "completions", "traces", "feedback", "spans"):
                db.execute(f"DELETE FROM {table}")

    # -- reads -------------------------------------------------------------------------

    def has_session(self, project_id: str, session_id: str) -> bool:
        """The session has something recorded in this project and is not deleted."""
        rows = self._query(
            "SELECT 1 FROM sessions WHERE id = ? AND project_id = ? AND deleted_at IS NULL",
            (session_id, project_id),
        )
        return bool(rows)

    def has_completion(self, project_id: str, completion_id: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM completions WHERE id = ? AND project_id = ?", (completion_id, project_id)
        )
        return bool(rows)

    def has_trace(self, project_id: str, trace_id: str, session_id: str | None = None) -> bool:
        """The trace was recorded (POSTed) in this project (and session, if given)."""
        sql = "SELECT 1 FROM traces WHERE id = ? AND project_id = ? AND recorded"
        params: tuple[Any, ...] = (trace_id, project_id)
        if session_id is not None:
            sql += " AND session_id = ?"
            params += (session_id,)
        return bool(self._query(sql, params))

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    _SESSION_SELECT = (
        "SELECT s.*,"
        " (SELECT COUNT(*) FROM completions c WHERE c.session_id = s.id) AS completion_count,"
        " (SELECT COUNT(*) FROM traces t WHERE t.session_id = s.id AND t.recorded)"
        " AS trace_count,"
        " (SELECT c.messages FROM completions c WHERE c.session_id = s.id ORDER BY c.seq"
        " LIMIT 1) AS first_messages FROM sessions s"
    )

    @staticmethod
    def _session(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "project_id": row["project_id"],
            "custom_metadata": _as_dict(_loads(row["custom_metadata"])),
            "first_seen": row["first_seen"],
            "last_activity": row["last_activity"],
            "deleted": row["deleted_at"] is not None,
            "completion_count": row["completion_count"],
            "trace_count": row["trace_count"],
            "first_user_message": _first_user_message(_loads(row["first_messages"])),
        }

    def sessions(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        where = "" if include_deleted else " WHERE s.deleted_at IS NULL"
        rows = self._query(
            f"{self._SESSION_SELECT}{where} ORDER BY s.last_activity DESC, s.rowid DESC"
        )
        return [self._session(row) for row in rows]

    def session(self, session_id: str) -> dict[str, Any] | None:
        rows = self._query(f"{self._SESSION_SELECT} WHERE s.id = ?", (session_id,))
        return self._session(rows[0]) if rows else None

    @staticmethod
    def _completion(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "session_id": row["session_id"],
            "project_id": row["project_id"],
            "parent_id": row["parent_id"],
            "messages": _loads(row["messages"]),
            "inputs": _loads(row["inputs"]),
            "model": row["model"],
            "provider": row["provider"],
            "start_time": row["start_time"],
            "end_time": row["end_time"],
            "call_info": _loads(row["call_info"]),
            "prompt_info": _loads(row["prompt_info"]),
            "eval_results": _as_dict(_loads(row["eval_results"])),
            "feedback": _as_dict(_loads(row["feedback"])),
            "payload": _loads(row["payload"]),
            "updates": _loads(row["updates"]),
            "received_at": row["received_at"],
        }

    _COMPLETION_SELECT = (
        "SELECT c.*, f.data AS feedback FROM completions c LEFT JOIN feedback f"
        " ON f.kind = 'completion' AND f.target_id = c.id"
    )

    def completions(self, session_id: str | None = None) -> list[dict[str, Any]]:
        if session_id is None:
            rows = self._query(f"{self._COMPLETION_SELECT} ORDER BY c.seq")
        else:
            rows = self._query(
                f"{self._COMPLETION_SELECT} WHERE c.session_id = ? ORDER BY c.seq", (session_id,)
            )
        return [self._completion(row) for row in rows]

    def completion(self, completion_id: str) -> dict[str, Any] | None:
        rows = self._query(f"{self._COMPLETION_SELECT} WHERE c.id = ?", (completion_id,))
        return self._completion(rows[0]) if rows else None

    @staticmethod
    def _trace(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "session_id": row["session_id"],
            "project_id": row["project_id"],
            "parent_id": row["parent_id"],
            "input": _loads(row["input"]),
            "output": _loads(row["output"]),
            "name": row["name"],
            "agent_name": row["agent_name"],
            "kind": row["kind"],
            "custom_metadata": _as_dict(_loads(row["custom_metadata"])),
            "eval_results": _as_dict(_loads(row["eval_results"])),
            "start_time": row["start_time"],
            "end_time": row["end_time"],
            "feedback": _as_dict(_loads(row["feedback"])),
            "payload": _loads(row["payload"]),
            "updates": _loads(row["updates"]),
            "recorded": bool(row["recorded"]),
            "received_at": row["received_at"],
        }

    _TRACE_SELECT = (
        "SELECT t.*, f.data AS feedback FROM traces t LEFT JOIN feedback f"
        " ON f.kind = 'trace' AND f.target_id = t.id"
    )

    def traces(
        self, session_id: str | None = None, *, include_unrecorded: bool = False
    ) -> list[dict[str, Any]]:
        conditions = [] if include_unrecorded else ["t.recorded"]
        params: tuple[Any, ...] = ()
        if session_id is not None:
            conditions.append("t.session_id = ?")
            params = (session_id,)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._query(f"{self._TRACE_SELECT}{where} ORDER BY t.seq", params)
        return [self._trace(row) for row in rows]

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        rows = self._query(f"{self._TRACE_SELECT} WHERE t.id = ?", (trace_id,))
        return self._trace(rows[0]) if rows else None

    def feedback(self, kind: str, target_id: str) -> dict[str, Any]:
        rows = self._query(
            "SELECT data FROM feedback WHERE kind = ? AND target_id = ?", (kind, target_id)
        )
        return _as_dict(_loads(rows[0]["data"])) if rows else {}
