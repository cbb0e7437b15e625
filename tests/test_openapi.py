"""The OpenAPI document is generated from the validating schemas."""

import json

from support import HANDOUT


def test_openapi_describes_every_endpoint(client):
    doc = client.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {"/predict", "/feedback", "/healthz", "/readyz", "/metrics", "/openapi.json"}
    assert set(doc["paths"]["/feedback"]["post"]["responses"]) >= {"200", "202", "400", "422", "503"}


def test_openapi_request_schema_matches_schema_json(client):
    spec = json.loads((HANDOUT / "schema.json").read_text())
    schema = client.get("/openapi.json").json["components"]["schemas"]["PredictRequest"]
    assert set(schema["properties"]) == {"id", *spec["features"]}
    assert set(schema["required"]) == {"id", *spec["features"]}
    for name, feature in spec["features"].items():
        prop = schema["properties"][name]
        if feature["type"] == "number":
            assert (prop["minimum"], prop["maximum"]) == (feature["minimum"], feature["maximum"])
        else:
            assert prop["enum"] == feature["enum"]
