"""Schema migrations: numbered SQL files applied in order, each exactly once.

Files are named ``NNNN_name.sql``. Each runs in its own transaction together with its
row in ``schema_migrations(version, name, checksum, applied_at)``. A file whose
checksum differs from the recorded one is refused (`MigrationError`): released
migrations are never edited, a change is a new file. The whole run holds a
session advisory lock, so processes starting together apply each file once.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg
import msgspec

from engine.adapters.postgres import session
from engine.errors import SteplogError

log = logging.getLogger(__name__)

# An arbitrary constant shared by every steplog process (the ASCII of "steplogM").
MIGRATION_LOCK_KEY = 0x737465706C6F674D & 0x7FFFFFFFFFFFFFFF
_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int         PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"
_RECORD = "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)"


class MigrationError(SteplogError):
    code = "migration_error"


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    checksum: str  # sha256 hex of the file's bytes
    sql: str


def default_migrations_dir() -> Path:
    """The repository's ``migrations/`` folder.

    steplog is installed editable in development, so it sits next to this
    package; an installed wheel (the Docker image) runs from a working directory
    that holds ``migrations/``.
    """
    candidates = [Path(__file__).resolve().parents[1] / "migrations", Path.cwd() / "migrations"]
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("[0-9][0-9][0-9][0-9]_*.sql")):
            return candidate
    raise FileNotFoundError(f"no migrations directory among {[str(c) for c in candidates]}")


def load_migrations(directory: Path) -> list[Migration]:
    """Parse ``directory`` into migrations sorted by version; refuse duplicates and strays."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file name must be NNNN_name.sql: {path.name}")
        raw = path.read_bytes()
        migrations.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                checksum=hashlib.sha256(raw).hexdigest(),
                sql=raw.decode("utf-8"),
            )
        )
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


async def migrate(
    target: asyncpg.Pool | asyncpg.Connection, directory: Path | None = None
) -> list[str]:
    """Apply the pending migrations of ``directory`` (default: `default_migrations_dir`).

    Returns the names (``NNNN_name``) applied by this call, in order. Raises
    `MigrationError` when an applied file was edited or a file name is malformed.
    """
    migrations = load_migrations(directory or default_migrations_dir())
    if isinstance(target, asyncpg.Pool):
        async with session(target) as conn:
            return await _migrate(conn, migrations)
    return await _migrate(target, migrations)


async def _migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    # No statement timeout for migrations (the pool's bounds requests and loops): a
    # migration may rewrite a large table, and waiting for another process's migrations
    # is expected. `session` resets the setting before the connection goes back to the pool.
    await conn.execute("SET statement_timeout = 0")
    # A session lock (not a transaction lock) so it spans every file's transaction.
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_TABLE)
        applied = {row["version"]: row for row in await conn.fetch(_APPLIED)}
        done: list[str] = []
        for m in migrations:
            label = f"{m.version:04d}_{m.name}"
            if (row := applied.pop(m.version, None)) is not None:
                if row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"migration {label} was edited after it was applied "
                        f"(recorded sha256 {row['checksum']}, file {m.checksum}); "
                        "add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(_RECORD, m.version, m.name, m.checksum)
            log.info("applied migration %s", label)
            done.append(label)
        for version, row in applied.items():
            # A newer release ran here; this code does not know its migrations. Keep going
            # (rolling deploys run old and new code side by side) but say so.
            log.warning("database has migration %04d_%s unknown to this code", version, row["name"])
        return done
    finally:
        if not conn.is_closed():  # a lost connection has released the lock already
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
