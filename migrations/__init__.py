"""Alembic migrations; installed with the node as ``app._migrations`` (see app/db/migrate.py)."""
