"""Schema migrations (Alembic) for the trial store, run programmatically: `sweeper db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

HERE = Path(__file__).parent
VERSION_TABLE = "sweeper_alembic_version"  # Optuna keeps its own `alembic_version` in the same database


def _config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


def schema_state(engine: Engine) -> str:
    """'current', 'missing' (never created) or 'behind' (an older revision: upgrade needed)."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
    if current is None:
        return "missing"
    return "current" if current == head else "behind"
