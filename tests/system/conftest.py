"""The system tier: real processes on loopback (gunicorn with several workers, PostgreSQL, nginx,
Prometheus, MLflow, make targets, the docs' commands), and any test that starts Python or trains a
model: the unit tier stays in-process, under 2 minutes. It runs beside the unit and deploy tiers."""
