"""Real processes on 127.0.0.1 for make targets, tests and benchmarks: one module a kind of process.

Each module imports only what its own process needs (process.py below them all), so starting
gunicorn or PostgreSQL never loads the container machinery.
"""

import pathlib

# The repository: the servers run its code with its shipped configuration.
ROOT = pathlib.Path(__file__).resolve().parent.parent
