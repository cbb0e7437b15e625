"""The OpenAPI description says exactly what the service does: every answer, every status, every rule."""

import json

import jsonschema_rs
import pytest
from support import HANDOUT, RECORD

from service import create_app

SPEC = json.loads((HANDOUT / "schema.json").read_text())
TOKENS = {"PREDICT_TOKEN": "p-secret", "FEEDBACK_TOKEN": "f-secret"}
PATHS = {"/predict": {"post"}, "/feedback": {"post"}, "/healthz": {"get"}, "/readyz": {"get"},
         "/metrics": {"get"}, "/openapi.json": {"get"}}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "TRACE")


def validator(doc, schema):
    """A JSON Schema 2020-12 validator for `schema`, its $refs resolved in the document's components."""
    root = {**schema, "components": doc["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


def assert_conforms(doc, method, path, response):
    """The status is documented for the operation, with this media type, headers and body schema."""
    operation = doc["paths"][path].get(method.lower())
    if operation is None:  # a method the path does not list: 405, Allow, the JSON error
        listed = {m.upper() for m in doc["paths"][path]}
        allowed = listed | {"OPTIONS"} | ({"HEAD"} if "GET" in listed else set())
        assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) == allowed
        schema = {"$ref": "#/components/schemas/Error"}
    else:
        answers = operation["responses"]
        assert str(response.status_code) in answers, f"{method} {path}: {response.status_code} undocumented"
        answer = answers[str(response.status_code)]
        assert response.mimetype in answer["content"]
        assert all(name in response.headers for name, header in answer.get("headers", {}).items()
                   if header.get("required"))
        schema = answer["content"][response.mimetype]["schema"]
    if response.mimetype == "application/json":
        errors = [e.message for e in validator(doc, schema).iter_errors(response.json)]
        assert not errors, f"{method} {path} {response.status_code}: {errors} in {response.json}"


class Clients(dict):
    """Test clients of the app as configured: open, with tokens, without a model, without a store.

    Each is built on first use: most tests need one, and an app loads a model.
    """

    def __init__(self, config, tmp_path):
        super().__init__()
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        self.overrides = {"open": {}, "tokens": TOKENS,
                          "no_model": {"MODEL_PATH": tmp_path / "missing.joblib"},
                          "no_store": {"FEEDBACK_DB": blocker / "feedback.db"}}
        self.config = config

    def __missing__(self, name):
        self[name] = create_app({**self.config, **self.overrides[name]}).test_client()
        return self[name]


@pytest.fixture
def clients(config, tmp_path):
    """Clients by configuration name."""
    return Clients(config, tmp_path)


def call(client, method, path, **kwargs):
    """A request, and the description this same app publishes."""
    return client.open(path, method=method, **kwargs), client.get("/openapi.json").json


FEEDBACK = {"id": 7, "Calories": 230}
OVERSIZED = json.dumps({**RECORD, "pad": "x" * 65536})
ANSWERS = [  # app, method, path, request, status, error code
    ("open", "POST", "/predict", {"json": RECORD}, 200, None),
    ("open", "POST", "/predict", {"data": "{", "content_type": "application/json"}, 400, "malformed_json"),
    ("tokens", "POST", "/predict", {"json": RECORD}, 401, "unauthorized"),
    ("open", "POST", "/predict", {"data": OVERSIZED, "content_type": "application/json"}, 413,
     "request_entity_too_large"),
    ("open", "POST", "/predict", {"data": json.dumps(RECORD), "content_type": "text/plain"}, 415,
     "unsupported_media_type"),
    ("open", "POST", "/predict", {"json": {**RECORD, "Age": 5}}, 422, "validation_error"),
    ("open", "POST", "/predict", {"json": [RECORD]}, 422, "validation_error"),
    ("no_model", "POST", "/predict", {"json": RECORD}, 503, "not_ready"),
    ("open", "POST", "/feedback", {"json": FEEDBACK}, 202, None),
    ("open", "POST", "/feedback", {"data": b"", "content_type": "application/json"}, 400, "malformed_json"),
    ("tokens", "POST", "/feedback", {"json": FEEDBACK}, 401, "unauthorized"),
    ("open", "POST", "/feedback", {"data": OVERSIZED, "content_type": "application/json"}, 413,
     "request_entity_too_large"),
    ("open", "POST", "/feedback", {"data": json.dumps(FEEDBACK)}, 415, "unsupported_media_type"),
    ("open", "POST", "/feedback", {"json": {**FEEDBACK, "ts": "yesterday"}}, 422, "validation_error"),
    ("open", "POST", "/feedback", {"json": {**FEEDBACK, "ts": 1_800_000_000 + 301}}, 422, "validation_error"),
    ("no_store", "POST", "/feedback", {"json": FEEDBACK}, 503, "store_unavailable"),
    ("open", "GET", "/healthz", {}, 200, None),
    ("open", "GET", "/readyz", {}, 200, None),
    ("no_store", "GET", "/readyz", {}, 200, None),
    ("no_model", "GET", "/readyz", {}, 503, None),
    ("open", "GET", "/metrics", {}, 200, None),
    ("open", "GET", "/openapi.json", {}, 200, None),
    ("tokens", "GET", "/openapi.json", {}, 200, None),
]


@pytest.mark.parametrize("app_name, method, path, request_, status, code", ANSWERS)
def test_every_answer_conforms_to_the_description(clients, app_name, method, path, request_, status, code):
    response, doc = call(clients[app_name], method, path, **request_)
    assert response.status_code == status, response.get_data(as_text=True)
    if code:
        assert response.json["error"]["code"] == code
        assert f"`{code}`" in doc["paths"][path][method.lower()]["responses"][str(status)]["description"]
    assert_conforms(doc, method, path, response)


def test_every_status_of_every_operation_is_exercised(clients):
    # The table above answers each documented status (the guarded app documents 401 too).
    exercised = {(method.lower(), path, str(status)) for _, method, path, _, status, _ in ANSWERS}
    exercised.add(("post", "/feedback", "200"))  # test_feedback_outcomes_conform
    doc = clients["tokens"].get("/openapi.json").json
    documented = {(method, path, status) for path, item in doc["paths"].items()
                  for method, op in item.items() for status in op["responses"]}
    assert documented == exercised


def test_feedback_outcomes_conform(clients):
    client = clients["open"]
    doc = client.get("/openapi.json").json
    client.post("/predict", json=RECORD)
    for outcome, status in (("matched", 200), ("duplicate", 200), ("unmatched", 202)):
        body = FEEDBACK if outcome != "unmatched" else {**FEEDBACK, "id": 8}
        response = client.post("/feedback", json=body)
        assert (response.status_code, response.json["outcome"]) == (status, outcome)
        assert_conforms(doc, "POST", "/feedback", response)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_methods_a_path_does_not_list_are_405_with_allow(client, path):
    doc = client.get("/openapi.json").json
    for method in (m for m in METHODS if m.lower() not in PATHS[path]):
        response = client.open(path, method=method, json=FEEDBACK)
        assert response.json["error"]["code"] == "method_not_allowed"
        assert_conforms(doc, method, path, response)


def test_unknown_path_is_the_json_error(client):
    response = client.get("/nope")
    doc = client.get("/openapi.json").json
    assert response.status_code == 404
    assert validator(doc, {"$ref": "#/components/schemas/Error"}).is_valid(response.json)


def test_openapi_describes_every_endpoint(client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"] == "3.1.0"
    assert {path: set(item) for path, item in doc["paths"].items()} == PATHS
    assert "more than 5 minutes in the future" in doc["info"]["description"]


@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_request_body_is_required_json(client, path):
    body = client.get("/openapi.json").json["paths"][path]["post"]["requestBody"]
    assert body["required"] is True and set(body["content"]) == {"application/json"}
    example = body["content"]["application/json"]["example"]
    assert client.post(path, json=example).status_code in (200, 202)  # the published example is accepted


def test_without_tokens_no_security_is_published(client):
    doc = client.get("/openapi.json").json
    assert "securitySchemes" not in doc["components"]
    assert not [op for item in doc["paths"].values() for op in item.values() if "security" in op or
                "401" in op["responses"]]


@pytest.mark.parametrize("tokens, guarded", [
    (TOKENS, {"/predict": "predictToken", "/feedback": "feedbackToken"}),
    ({"PREDICT_TOKEN": "p-secret"}, {"/predict": "predictToken"}),
    ({"FEEDBACK_TOKEN": "f-secret"}, {"/feedback": "feedbackToken"}),
])
def test_a_bearer_scheme_exactly_where_a_token_is_configured(config, tokens, guarded):
    doc = create_app({**config, **tokens}).test_client().get("/openapi.json").json
    assert set(doc["components"]["securitySchemes"]) == set(guarded.values())
    assert all(s == {"type": "http", "scheme": "bearer", "description": s["description"]}
               for s in doc["components"]["securitySchemes"].values())
    for path, item in doc["paths"].items():
        for op in item.values():
            assert op.get("security") == ([{guarded[path]: []}] if path in guarded else None)
            assert ("401" in op["responses"]) == (path in guarded)
    assert not [v for v in tokens.values() if v in json.dumps(doc)]  # never the token itself


def test_openapi_request_schema_matches_schema_json(client):
    schema = client.get("/openapi.json").json["components"]["schemas"]["PredictRequest"]
    assert set(schema["properties"]) == {"id", *SPEC["features"]}
    assert set(schema["required"]) == {"id", *SPEC["features"]}
    assert schema["additionalProperties"] is False
    for name, feature in SPEC["features"].items():
        prop = schema["properties"][name]
        if feature["type"] == "number":
            assert (prop["minimum"], prop["maximum"]) == (feature["minimum"], feature["maximum"])
        else:
            assert prop["enum"] == feature["enum"]
