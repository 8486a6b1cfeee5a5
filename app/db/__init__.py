"""Persistence: the schema, engines per dialect, migrations, cross-process wake-ups."""
