"""The image's HEALTHCHECK: exit 0 when /readyz answers 200 on the probe listener's port (PROBE_BIND),
else BIND's (no curl needed)."""

import os
import sys
import urllib.request


def main():
    """Probe /readyz over loopback, ignoring any proxy settings; 0 when ready, else 1."""
    # The probe listener never waits behind a burst in the traffic's backlog.
    listener = os.environ.get("PROBE_BIND") or os.environ.get("BIND", "0.0.0.0:8000")
    port = listener.rsplit(":", 1)[-1]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/readyz", timeout=3) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError is an OSError)
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
