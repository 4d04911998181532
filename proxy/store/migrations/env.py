"""Alembic environment: runs on the connection `Store.open` hands over (never opens its own).

`Store.open` passes a synchronous connection already inside a transaction (and, on PostgreSQL, holding
the migration advisory lock) as `config.attributes["connection"]`; every revision runs in it.
"""

from __future__ import annotations

from alembic import context

from proxy.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through proxy.store.db.Store.open, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
