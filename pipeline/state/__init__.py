"""The record: task state in PostgreSQL (models, engine, status order, transitions)."""
