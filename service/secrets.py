"""Secrets in URLs: the redacted form every message must use, and a scrubber for any text."""

import os
import re
import urllib.parse

REDACTED = "***"
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/?#]*):(?P<password>[^@/?#]*)@", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)(?P<password>[^&#]*)", re.I)


def redact(url):
    """The URL with its password replaced: `postgresql://user:***@host/db`."""
    url = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", url)
    return _QUERY_PASSWORD.sub(lambda m: m["key"] + REDACTED, url)


def secrets_in(url, env=None):
    """Every form of a password this configuration carries: the URL's (raw and decoded), PGPASSWORD."""
    env = os.environ if env is None else env
    found = [m["password"] for m in (_USERINFO.match(url), *_QUERY_PASSWORD.finditer(url)) if m]
    found += [urllib.parse.unquote(s) for s in found]
    if env.get("PGPASSWORD"):
        found.append(env["PGPASSWORD"])
    # Longest first, so a password that contains another is replaced whole.
    return sorted({s for s in found if s}, key=len, reverse=True)


class Scrubber:
    """Removes the configuration's secrets from any text before it reaches a log, body or label."""

    def __init__(self, url, env=None):
        self.url, self.redacted = url, redact(url)
        self.secrets = secrets_in(url, env)

    def __call__(self, text):
        text = str(text).replace(self.url, self.redacted)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text
