"""Publishing: the handout's trained model into MLflow, as a registered model version.

One run per artifact (its parameters and holdout metrics from metrics.json; as artifacts the model,
metrics.json, schema.json, features.py, a parity sample, the compiled tree library, the loss
estimator and interval calibration when fitted, and files.json;
the data sample's, the artifact's sha256 and the model_version as tags), then a version of the
registered model. The same artifact published twice finds its version instead of adding one.
"""

import json
import logging
import pathlib
import tempfile
import time

from ..model import ModelService, quality_files
from ..model.trust import file_sha256, read_metrics, verify_artifact
from . import mlflow_rest, registry

log = logging.getLogger(__name__)
PARITY_ROWS = 1000  # what the startup parity check needs: every tree path taken, in seconds


def parity_sample(handout, out):
    """The first PARITY_ROWS rows of the handout sample (header kept)."""
    with open(handout / "data_sample" / "train.csv") as src, open(out, "w") as dst:
        for n, line in enumerate(src):
            if n > PARITY_ROWS:
                break
            dst.write(line)
    return out


def compiled_library(model, handout, sample, cache):
    """Build the trees' library as the service would, checked against Pipeline.predict; None if not."""
    service = ModelService(model, handout, compiled_dir=cache, sample_path=sample)
    service.load()
    if service.inference != "compiled":
        log.warning("no compiled library published (inference here: %s): a host without a C compiler "
                    "will serve this version with XGBoost's booster", service.inference)
        return None
    return pathlib.Path(service.fast.compiled.path)


def staged_files(args, metrics, tmp):
    """{artifact name: local path} of everything a version carries, and files.json describing them."""
    files = {"model.joblib": args.model, "metrics.json": args.model.with_name("metrics.json"),
             "schema.json": args.handout / "schema.json", "features.py": args.handout / "features.py",
             registry.PARITY_SAMPLE: parity_sample(args.handout, tmp / registry.PARITY_SAMPLE)}
    # The loss estimator and interval calibration fitted beside the artifact (calories fit-quality):
    # the version carries them, under the manifest's digests; without them it serves no estimate.
    for name in (quality_files.QUALITY_FILE, quality_files.ESTIMATOR_FILE):
        if args.model.with_name(name).is_file():
            files[name] = args.model.with_name(name)
    manifest = {"model_version": metrics["model_version"], "artifact_sha256": metrics["artifact_sha256"]}
    library = None if args.no_compiled else compiled_library(
        args.model, args.handout, files[registry.PARITY_SAMPLE], tmp / "compiled")
    if library is not None:
        name = f"published/{library.name}"
        files[name] = library
        manifest["compiled"] = {"file": name, **registry.platform_tag()}
    manifest["files"] = {name: file_sha256(path) for name, path in files.items()}
    (tmp / registry.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    files[registry.MANIFEST] = tmp / registry.MANIFEST
    return files, manifest


def run_record(metrics, data_sha256, manifest):
    """The run's params, metrics and tags (MLflow's log-batch shapes)."""
    now = int(time.time() * 1000)
    params = {"seed": metrics.get("seed"), "n_estimators": metrics.get("n_estimators"),
              "target": metrics.get("target"), "rows_train": metrics.get("rows", {}).get("train"),
              "rows_holdout": metrics.get("rows", {}).get("holdout"),
              "features": ",".join(metrics.get("features", [])),
              "data_path": metrics.get("data", {}).get("path"),
              **{f"version_{k}": v for k, v in metrics.get("versions", {}).items()}}
    values = {k: metrics[k] for k in ("holdout_rmsle", "holdout_mae", "training_seconds") if k in metrics}
    tags = {"model_version": metrics["model_version"], "artifact_sha256": metrics["artifact_sha256"],
            "data_sha256": data_sha256, "mlflow.runName": metrics["model_version"],
            "compiled_platform": json.dumps(manifest.get("compiled", {}))}
    return ([{"key": k, "value": str(v)} for k, v in params.items() if v is not None],
            [{"key": k, "value": float(v), "timestamp": now, "step": 0} for k, v in values.items()],
            [{"key": k, "value": v} for k, v in tags.items()])


def existing_entry(rest, name, sha):
    """The MLflow entry of this artifact's registered version, if it was published before."""
    try:
        found = rest.search_versions(f"name='{name}' and tags.artifact_sha256='{sha}'")
    except mlflow_rest.NotFound:
        return None
    return min(found, key=lambda v: int(v["version"])) if found else None


def finished_run(rest, experiment_id, sha):
    """A completed run of this artifact (every artifact uploaded), if one exists."""
    found = f"tags.artifact_sha256 = '{sha}' and attributes.status = 'FINISHED'"
    runs = rest.search_runs(experiment_id, found)
    return runs[0]["info"] if runs else None


def log_run(rest, experiment_id, args, metrics):
    """Create the run, log its record and upload every artifact; the run's info."""
    with tempfile.TemporaryDirectory(prefix="calories-publish-") as tmp:
        files, manifest = staged_files(args, metrics, pathlib.Path(tmp))
        data_sha = file_sha256(args.handout / "data_sample" / "train.csv")
        info = rest.post("runs/create", experiment_id=experiment_id, run_name=metrics["model_version"],
                         start_time=int(time.time() * 1000))["run"]["info"]
        params, values, tags = run_record(metrics, data_sha, manifest)
        rest.log_batch(info["run_id"], params=params, metrics=values, tags=tags)
        for name, path in files.items():
            rest.upload(info["artifact_uri"], f"model/{name}", path)
    rest.post("runs/update", run_id=info["run_id"], status="FINISHED", end_time=int(time.time() * 1000))
    return info


def register(rest, name, info, metrics):
    """A new version of the registered model (created when missing) from the run's model/ folder."""
    try:
        rest.post("registered-models/create", name=name)
    except mlflow_rest.RegistryError as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    tags = [{"key": k, "value": metrics[k]} for k in ("model_version", "artifact_sha256")]
    return rest.post("model-versions/create", name=name, source=f"{info['artifact_uri']}/model",
                     run_id=info["run_id"], tags=tags)["model_version"]


def publish(args):
    """Publish (or find) the artifact's version; the report as a dict."""
    metrics = read_metrics(args.model)
    verify_artifact(args.model, metrics)  # never publish bytes other than the ones training recorded
    rest = registry.client(args.settings)
    version_entry, created = existing_entry(rest, args.name, metrics["artifact_sha256"]), False
    if version_entry is None:
        experiment_id = rest.experiment_id(args.experiment)
        info = finished_run(rest, experiment_id, metrics["artifact_sha256"]) or log_run(
            rest, experiment_id, args, metrics)
        version_entry, created = register(rest, args.name, info, metrics), True
    number = int(version_entry["version"])
    if args.alias:
        rest.set_alias(args.name, args.alias, number)
    return {"name": args.name, "version": number, "uri": f"models:/{args.name}/{number}",
            "run_id": version_entry["run_id"], "model_version": metrics["model_version"], "created": created,
            "alias": args.alias}
