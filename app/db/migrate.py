"""Apply or inspect the Alembic history from inside the node.

The migrations ship inside the package as ``app._migrations`` (in a checkout a symlink to
the top-level ``migrations/``), so an installed node (wheel, ``pip install .``, the image)
migrates from any directory: the Alembic config is built here, not read from an
``alembic.ini`` in the working directory. ``alembic.ini`` at the root stays for ``alembic``
command-line users in a checkout.
"""

from __future__ import annotations

from importlib.resources import as_file, files

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.db.engine import Database

#: The package holding ``env.py``, ``script.py.mako`` and ``versions/``.
MIGRATIONS_PACKAGE = "app._migrations"


def alembic_config() -> Config:
    """Alembic's config for the migrations installed with this code, wherever the cwd is."""
    config = Config()
    # Installed as plain files (wheel or checkout): as_file hands back the real directory.
    with as_file(files(MIGRATIONS_PACKAGE)) as location:
        config.set_main_option("script_location", str(location))
    config.set_main_option("path_separator", "os")
    return config


async def upgrade(database: Database, revision: str = "head") -> None:
    """Migrate through the writer engine (on SQLite: under its write lock). On PostgreSQL
    through connections without the node's deadline: a migration may wait for another
    node's (its advisory lock) or rewrite a big table, legitimately for long."""
    if database.is_postgresql and database.statement_timeout is not None:
        unbounded = Database(
            database.url.render_as_string(hide_password=False),
            pool_size=1,
            connect_timeout=database.connect_timeout,
            statement_timeout=None,
        )
        try:
            await upgrade(unbounded, revision)
        finally:
            await unbounded.dispose()
        return
    config = alembic_config()

    def _upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with database.writer.connect() as connection:
        await connection.run_sync(_upgrade)
        await connection.commit()


async def current_revision(database: Database) -> str | None:
    async with database.reader.connect() as connection:
        return await connection.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
