"""Alembic environment: runs on the connection `api._db.upgrade` passes in."""

from __future__ import annotations

from alembic import context

from api._db import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic` command line: build an engine from the configured URL
    from api._db import make_engine

    url = context.config.get_main_option("sqlalchemy.url")
    with make_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    context.run_migrations()
