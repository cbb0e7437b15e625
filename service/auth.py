"""Optional bearer tokens: a blueprint guarded by a configured token refuses requests without it."""

import hmac

from flask import current_app, request

from .errors import Unauthorized


def require_token(config_key):
    """A before_request hook: 401 unless `Authorization: Bearer <app.config[config_key]>`."""

    def check():
        expected = current_app.config.get(config_key)
        if not expected:
            return  # no token configured: open, as documented
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the token matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Unauthorized("missing or wrong bearer token")

    return check
