"""The lifecycle wing: model versions in the registry, where an instance's model comes from, the
rollout's pointer, publishing, rollout and live quality. It may import the model wing and the store,
never the request path.

mlflow_rest (the REST client), registry (URIs, the version cache, files checked), pointer (what an
instance serves, what each worker loaded), origin (the ModelSource the configuration names),
rollout, publish, live_quality.
"""

from .origin import challenger_sources, model_source
from .pointer import note_worker

__all__ = ["challenger_sources", "model_source", "note_worker"]
