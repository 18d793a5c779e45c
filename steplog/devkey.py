"""The development flow's admin key: `steplog dev` (`make run`) with authentication on
creates a global admin key on its first start, prints it once and keeps it in
``<data dir>/admin.key`` (mode 0600), which the README tour reads:
``-H "Authorization: Bearer $(cat .steplog/admin.key)"``. A later start finds the file's
key still valid and does nothing; a file whose key no longer works (revoked, or a new
database) is replaced by a new key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from engine.access import Access, Actor
from engine.errors import Unauthenticated

FILE_NAME = "admin.key"


async def ensure_admin_key(access: Access, data_dir: Path, out: TextIO) -> Path:
    """The path of a file holding a working global admin key (made when needed)."""
    path = data_dir / FILE_NAME
    kept = _read(path)
    if kept is not None:
        try:
            await access.authenticate(kept)
            return path
        except Unauthenticated:
            pass
    _, token = await access.create_key(
        namespace=None,
        role="admin",
        name="steplog dev",
        actor=Actor(key_id=None, namespace=None, remote="steplog dev"),
    )
    _write_private(path, token)
    out.write(
        f"steplog: created an admin API key (shown this once; kept in {path}, mode 0600):\n"
        f"  {token}\n"
        f'  curl -H "Authorization: Bearer $(cat {path})" ...\n'
    )
    out.flush()
    return path


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _write_private(path: Path, token: str) -> None:
    """Write ``token`` to ``path``, readable by its owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
