"""FEEDBACK_DB: a SQLite path or a PostgreSQL URL."""

SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(target):
    """Whether FEEDBACK_DB names a PostgreSQL database (a postgresql:// or postgres:// URL)."""
    return isinstance(target, str) and target.lower().startswith(SCHEMES)
