"""ModelSource: where a model's files are, and how to get them there (what the model wing loads)."""

import pathlib
from dataclasses import dataclass, field


def _nothing_to_fetch():
    """A model on local disk needs no download."""


@dataclass(frozen=True)
class ModelSource:
    """The artifact, the folder of its own code (features.py, schema.json), its parity sample, the
    compiled-library cache (None: no compiled evaluator), the registry URI it came from, and a fetch
    that puts the files in place first (raises ModelLoadError when it cannot)."""

    model_path: pathlib.Path
    code_dir: pathlib.Path
    sample_path: pathlib.Path | None = None
    compiled_dir: pathlib.Path | None = None
    compiled_readonly: bool = False
    uri: object = None
    fetch: object = field(default=_nothing_to_fetch, compare=False)
