"""Local scale-out: a throwaway PostgreSQL cluster, N service instances and nginx, on loopback."""
