"""Local scale-out: a throwaway PostgreSQL cluster, N service instances and nginx, on loopback.

`make scaleout` runs it; the tests and the benchmarks start the same pieces.
"""

import socket


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
