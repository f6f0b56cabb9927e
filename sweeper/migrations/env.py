"""Alembic environment: migrations run on the connection handed over by `sweeper.migrations`."""

from alembic import context

from sweeper.migrations import VERSION_TABLE
from sweeper.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
