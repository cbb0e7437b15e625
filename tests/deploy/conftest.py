"""The deploy tier: containers (a private dockerd, the image and its stand-ins, built at collection
in the background), the Compose stack and the Kubernetes manifests. The docker machinery loads only
here."""

from docker_support import *  # noqa: F403 (its session fixtures and collection hook are this tier's)
