"""Numbered schema scripts per dialect: `<dialect>/000N_name.sql` brings a store to version N.

Both dialects carry the same numbers, so a version means the same schema whichever backend.
"""

from importlib import resources


def scripts(dialect):
    """The dialect's migration scripts, in order."""
    folder = resources.files(__package__).joinpath(dialect)
    return sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)


def statements(text):
    """The statements of a script, in order (sqlite3's executescript would commit on its own)."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
