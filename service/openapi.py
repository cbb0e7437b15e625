"""GET /openapi.json: the API description, generated from the schemas that validate requests."""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app

from . import schemas

bp = Blueprint("openapi", __name__)


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


def _error(description):
    return {"description": description, **_json("Error")}


def build_spec(predict_schema):
    """The OpenAPI 3 document for every endpoint."""
    spec = APISpec("Calories serving and monitoring", "1.0.0", "3.0.3", plugins=[MarshmallowPlugin()])
    for name, schema in [("PredictRequest", predict_schema),
                         ("PredictResponse", schemas.PredictResponseSchema),
                         ("FeedbackRequest", schemas.FEEDBACK_SCHEMA),
                         ("FeedbackResponse", schemas.FeedbackResponseSchema),
                         ("Error", schemas.ErrorSchema), ("Health", schemas.HealthSchema)]:
        spec.components.schema(name, schema=schema)
    bad = {"400": _error("malformed JSON"), "413": _error("body too large"),
           "415": _error("not application/json"), "422": _error("schema violation, per field")}
    spec.path("/predict", operations={"post": {
        "summary": "Predict Calories for one record", "requestBody": _json("PredictRequest"),
        "responses": {"200": {"description": "prediction", **_json("PredictResponse")}, **bad,
                      "503": _error("no model loaded")}}})
    spec.path("/feedback", operations={"post": {
        "summary": "Delayed ground truth for a predicted id", "requestBody": _json("FeedbackRequest"),
        "responses": {"200": {"description": "matched or duplicate", **_json("FeedbackResponse")},
                      "202": {"description": "unmatched: no prediction event for the id",
                              **_json("FeedbackResponse")},
                      **bad, "503": _error("store unavailable: not recorded, retry")}}})
    spec.path("/healthz", operations={"get": {"summary": "Liveness", "responses": {
        "200": {"description": "process runs", **_json("Health")}}}})
    spec.path("/readyz", operations={"get": {"summary": "Readiness", "responses": {
        "200": {"description": "model loaded, store writable", **_json("Health")},
        "503": {"description": "not ready, with the reason", **_json("Health")}}}})
    spec.path("/metrics", operations={"get": {"summary": "Prometheus text exposition", "responses": {
        "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}})
    spec.path("/openapi.json", operations={"get": {"summary": "This document", "responses": {
        "200": {"description": "OpenAPI 3", **_json({"type": "object"})}}}})
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return current_app.extensions["openapi"]
