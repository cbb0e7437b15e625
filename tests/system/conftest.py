"""The system tier: real processes on loopback (gunicorn with several workers, PostgreSQL, nginx,
Prometheus, MLflow, make targets, the docs' commands), and the slower tests that start Python or
train a model of their own: the unit tier stays under 2 minutes. It runs beside the unit and deploy
tiers."""
