"""Alembic environment: runs against the connection the control plane hands it."""
from alembic import context

from control_plane.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
