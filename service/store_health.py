"""The store's health for /readyz and app_store_up, taken from real writes while they flow."""

import time

from flask import current_app

# A write of a prediction or feedback that committed this recently proves the store takes writes:
# a probe or scrape then answers from it instead of writing itself behind a burst's commits.
FRESH_SECONDS = 1.0


class StoreHealth:
    """This worker's latest evidence about the store: real writes, else a probe write of its own."""

    def __init__(self, store, clock=time.monotonic):
        self.store, self.clock = store, clock
        self.committed_at = None  # the last real write that committed, while none has failed since

    def wrote(self):
        """A prediction or feedback committed."""
        self.committed_at = self.clock()

    def failed(self):
        """A write failed: the next probe writes to find out why (and whether it still does)."""
        self.committed_at = None

    def health(self):
        """As Store.health(): from a real write this recent, else from a write now."""
        if self.committed_at is not None and self.clock() - self.committed_at < FRESH_SECONDS:
            return {"backend": self.store.backend, "up": True}
        return self.store.health()


def init_app(app):
    """Attach this worker's evidence to the app's store."""
    app.extensions["store_health"] = StoreHealth(app.extensions["store"])


def current():
    """The running app's StoreHealth."""
    return current_app.extensions["store_health"]
