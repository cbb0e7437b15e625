"""The reference: a bare Flask endpoint answering a constant, served under the same gunicorn config."""

from flask import Flask


def create_app():
    """An app with one constant /predict."""
    app = Flask(__name__)

    @app.post("/predict")
    def predict():
        return {"id": 1, "Calories": 1.0}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


app = create_app()
