"""Persistence: models, engine/sessions, migrations and the job repository.

The worker opens the same database with::

    from service.db import open_repo
    repo = open_repo()            # Settings() from the SGMIM_* environment; migrates to head
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.db.repo import JobRepo
    from service.settings import Settings


def open_repo(settings: Settings | None = None, migrate: bool = True) -> JobRepo:
    """A JobRepo on the configured database (migrations applied unless migrate=False)."""
    from service.db import migrate as migrations
    from service.db.repo import JobRepo
    from service.db.session import Database
    from service.settings import Settings

    db = Database.from_settings(settings or Settings())
    if migrate:
        migrations.upgrade(db.engine)
    return JobRepo(db)
