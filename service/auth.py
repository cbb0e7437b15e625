"""Optional bearer tokens: a blueprint guarded by a configured token refuses requests without it."""

import hmac

from flask import request

from .errors import Unauthorized


def require_token(bp, config_key):
    """Guard bp: 401 unless `Authorization: Bearer <app.config[config_key]>`. Without a token
    configured the blueprint is open, as documented, and gets no hook at all (one less per request)."""

    def register(state):
        expected = state.app.config.get(config_key)
        if expected:
            state.app.before_request_funcs.setdefault(bp.name, []).append(_check(expected))

    bp.record_once(register)


def _check(expected):
    def check():
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized("missing or wrong bearer token")

    return check
