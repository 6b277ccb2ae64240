"""Alembic environment for the jobs tables: run on the connection JobsDB hands over (no alembic.ini)."""

from alembic import context

from tunelab.jobs.db import VERSION_TABLE, Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
