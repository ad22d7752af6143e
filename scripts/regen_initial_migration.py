"""Regenerate migration 0001 from scheduler/store/tables.py.

Only while nothing has been released: once a database exists in the wild, add new revisions
(`alembic revision --autogenerate`) instead of rewriting this one.
"""

from __future__ import annotations

import tempfile

from alembic import command

from scheduler.store.db import MIGRATIONS_DIR, alembic_config, make_engine

VERSIONS = MIGRATIONS_DIR / "versions"


def main() -> None:
    for old in VERSIONS.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/empty.db"
        make_engine(url).dispose()
        cfg = alembic_config(url)
        command.revision(cfg, message="initial schema", autogenerate=True, rev_id="0001",
                         version_path=str(VERSIONS))
    path = next(VERSIONS.glob("0001_*.py"))
    text = path.read_text()
    # Autogenerate emits sqlite-flavoured batch ops for nothing here; keep the file plain.
    path.write_text(text.replace("scheduler.store.types.UtcDateTime()",
                                 "scheduler.store.types.UtcDateTime()"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
