"""The schema's versions, applied at start-up: one file per version under schema/, each in a
transaction, under an advisory lock so that nodes starting together apply each once."""

from __future__ import annotations

from importlib import resources
from typing import Any

import psycopg

SCHEMA_VERSION = 1
# pg_advisory_lock's key for migrations: b"wschat" as an integer.
MIGRATION_LOCK = int.from_bytes(b"wschat", "big")


class SchemaTooNew(Exception):
    """The database was migrated by a newer wschat: this one must not write to it."""


def schema_sql(version: int) -> str:
    return resources.files("wschat.postgres").joinpath(f"schema/v{version}.sql").read_text("utf-8")


def migrate(
    conn: psycopg.Connection[Any], target: int = SCHEMA_VERSION, expiring: bool = False
) -> int:
    """Bring the database to `target` and say from which version (0: it was empty).
    SchemaTooNew if it is past `target`. `conn` must be in autocommit mode. `expiring`
    (--history-ttl) adds the index on `ts` that the expiry reads: one more index per insert,
    so made only when asked for (it stays, harmless, if the TTL is later turned off)."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS wschat_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM wschat_schema").fetchone()
        found = int(row[0]) if row and row[0] is not None else 0
        if found > target:
            raise SchemaTooNew(
                f"the history database has schema v{found}; this wschat knows up to v{target}"
            )
        for step in range(found + 1, target + 1):
            with conn.transaction():
                conn.execute(schema_sql(step).encode())
                conn.execute("DELETE FROM wschat_schema")
                conn.execute("INSERT INTO wschat_schema (version) VALUES (%s)", (step,))
        if expiring:
            conn.execute("CREATE INDEX IF NOT EXISTS messages_ts ON messages (ts)")
        return found
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
