"""Schemathesis hooks for test_schemathesis.py: forgive only the refusal the description lists.

`POST /feedback` with a `ts` more than 5 minutes ahead of the service's clock is valid by the
schema (no static schema knows the time) but refused with 422; the description says so. Only
that refusal, with exactly its body and for a `ts` that really is ahead, is dropped.
"""

import time

import schemathesis
from marshmallow import ValidationError
from schemathesis.openapi.checks import RejectedPositiveData

from service.schemas import FEEDBACK_SCHEMA

FUTURE = {"ts": ["more than 5 minutes in the future"]}
MAX_FUTURE_SECONDS = 300
CLOCK_SLACK_SECONDS = 60  # the answer came before this hook looked at the clock


def ts_ahead(body, now):
    """Whether the body's ts, read as the service reads it, is more than 5 minutes after `now`."""
    try:
        ts = FEEDBACK_SCHEMA.load(body)["ts"]
    except ValidationError:  # a body the service's own schema refuses is never forgiven
        return False
    return ts is not None and ts > now + MAX_FUTURE_SECONDS - CLOCK_SLACK_SECONDS


def is_listed_refusal(case, response, now):
    """A 422 for a future ts, with the error the description names, on POST /feedback."""
    if (case.method.upper(), case.operation.path, response.status_code) != ("POST", "/feedback", 422):
        return False
    error = response.json().get("error", {})
    return error.get("code") == "validation_error" and error.get("details") == FUTURE and ts_ahead(
        case.body, now)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every failure but a schema-valid request refused for the listed reason."""
    forgiven = isinstance(failure, RejectedPositiveData) and is_listed_refusal(case, response, time.time())
    return not forgiven
