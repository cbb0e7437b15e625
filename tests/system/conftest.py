"""The system tier: real processes on loopback (gunicorn with several workers, PostgreSQL, nginx,
Prometheus, MLflow, make targets, the docs' commands). It runs beside the unit and deploy tiers."""
