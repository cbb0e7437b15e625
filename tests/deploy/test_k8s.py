"""deploy/k8s renders, validates strictly, and keeps the service's contracts; the HPA's metric is one
the service exports and the adapter's rule maps it, checked against a real Prometheus.

No cluster can run here: `kubectl kustomize` renders every overlay, kubernetes-validate --strict
checks the output against Kubernetes' schemas, and a real Prometheus with the overlay's own scrape
config (pod discovery replaced by one static target carrying the labels discovery would give)
scrapes a real gunicorn, so the adapter's seriesQuery and metricsQuery run on real series.
"""

import math
import re
import shutil
import subprocess
import sys

import pytest
import requests
import yaml
from support import RECORD, ROOT, Gunicorn, missing

from loopback.process import free_port, wait_until
from loopback.prometheus import Prometheus
from service import config as service_config

K8S = ROOT / "deploy" / "k8s"
# The image compose.yaml builds from deploy/mlflow; the minikube overlay loads and runs the same.
MLFLOW_IMAGE = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["mlflow"]["image"]
GUARD = "calories-guard"
WRITER = "calories-registry-writer"  # the Secret of the registry's write credentials
OVERLAYS = ("minikube", "production")
KUBERNETES_VERSION = "1.37.0"  # the newest kubernetes-validate knows (constraints.txt pins it)
GUIDE = (ROOT / "docs" / "deployment.md").read_text()  # its Kubernetes section, moved from README


def tool(name):
    """A command from this environment's bin (tox or .venv), else PATH; CI must have it."""
    local = ROOT / ".venv" / "bin" / name
    for candidate in (str(sys.executable).rsplit("/", 1)[0] + "/" + name, str(local)):
        if shutil.os.access(candidate, shutil.os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        hint = (f"pip install {name} (tox installs it)" if name != "kubectl" else
                "kubectl with kustomize v5 (.ci/run checks it; Debian's kubernetes-client 1.20 is too old)")
        missing(name, hint)
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """{overlay: (path of the rendered YAML, [documents])}, secrets made from the committed examples."""
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree)
    for example in tree.glob("overlays/*/*.env.example"):
        shutil.copy(example, example.with_name(example.name.removesuffix(".example")))
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run([tool("kubectl"), "kustomize", str(tree / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        path = tree / f"{overlay}.yaml"
        path.write_text(done.stdout)
        out[overlay] = (path, [d for d in yaml.safe_load_all(done.stdout) if d])
    return out


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def configmap(docs, prefix):
    """The generated ConfigMap whose name (before kustomize's hash suffix) is prefix."""
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix))


def validate(path):
    return subprocess.run([tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(rendered, overlay):
    path, docs = rendered[overlay]
    done = validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = re.findall(r"passed for resource (\S+)", done.stdout)
    crds = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(passed) == len(docs) - len(crds)  # every resource with a schema was checked
    for crd in crds:  # kubernetes-validate has no CRD schemas: see test_servicemonitor_fields
        assert f"Couldn't find schema for kind {crd['kind']}" in done.stdout + done.stderr


def test_strict_validation_refuses_a_misspelt_field(rendered, tmp_path):
    path, _ = rendered["minikube"]
    broken = tmp_path / "broken.yaml"
    broken.write_text(path.read_text().replace("averageValue:", "averageValu:"))
    done = validate(broken)
    assert done.returncode != 0 and "averageValu" in done.stdout + done.stderr


def test_yamllint():
    done = subprocess.run([tool("yamllint"), "--strict", "-c", str(K8S / ".yamllint.yaml"), str(K8S)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout


def container(docs, name="calories"):
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def cpu(quantity):
    """A CPU quantity in cores."""
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_keeps_the_service_contracts(rendered, overlay):
    _, docs = rendered[overlay]
    pod = find(docs, "Deployment", "calories")["spec"]["template"]["spec"]
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    env = {e["name"]: e for e in c["env"]}
    assert env["BIND"]["value"].endswith(f":{ports['http']}")
    # Probes on their own listener: never behind a burst in the traffic's backlog.
    assert env["PROBE_BIND"]["value"].endswith(f":{ports['probes']}") and ports["probes"] != ports["http"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert c["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    # Non-root with the image's UID, read-only root, nothing to escalate.
    assert pod["securityContext"]["runAsNonRoot"] is True
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG UID={pod['securityContext']['runAsUser']}" in dockerfile
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    # Workers from the CPU limit: the Downward API rounds limit / divisor up.
    field = env["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"]
    assert field["resource"] == "limits.cpu" and field["containerName"] == c["name"]
    limit = cpu(c["resources"]["limits"]["cpu"])
    workers = math.ceil(limit / cpu(field["divisor"]))
    assert service_config.server_settings({"WEB_CONCURRENCY": str(workers)})["workers"] == workers == 2
    settings = configmap(docs, "calories-config")["data"]
    for name in service_config.THREAD_VARIABLES:  # the same figure: CPUs of the limit per worker
        assert settings[name] == str(max(1, int(limit // workers)))
    # The multiprocess directory on a size-limited memory emptyDir.
    multiproc = env["PROMETHEUS_MULTIPROC_DIR"]["value"]
    mount = next(m for m in c["volumeMounts"] if multiproc.startswith(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"]
    # Grace covers preStop plus gunicorn's drain, so in-flight requests finish.
    conf = (ROOT / "gunicorn.conf.py").read_text()
    graceful = int(re.search(r"^graceful_timeout = (\d+)", conf, re.M).group(1))
    pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + graceful
    assert c["readinessProbe"]["timeoutSeconds"] <= pre_stop + graceful
    secret = next(s for s in c["envFrom"] if "secretRef" in s)["secretRef"]["name"]
    assert any(d["kind"] == "Secret" and d["metadata"]["name"] == secret for d in docs)
    pdb, service = find(docs, "PodDisruptionBudget"), find(docs, "Service", "calories")
    labels = find(docs, "Deployment", "calories")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert len(pod["topologySpreadConstraints"]) >= 1


def test_minikube_pulls_nothing_and_pins_every_other_image(rendered):
    _, docs = rendered["minikube"]
    images = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                images.setdefault(c["image"], set()).add(c.get("imagePullPolicy"))
    # The project's images (the service's and the guard's, MLflow's) come from `minikube image load`.
    assert images.pop("calories:latest") == {"IfNotPresent"}
    assert images[MLFLOW_IMAGE] == {"IfNotPresent"}
    # Versions, not floating tags (PostgreSQL's are major.minor: 16.4 is a patch release).
    assert images and all(re.search(r":v?\d+\.\d+(\.\d+)?(-\w+)?$", image) for image in images)


def test_hpa_shape(rendered):
    _, docs = rendered["minikube"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["scaleTargetRef"]["name"] == "calories"
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert all(p["periodSeconds"] <= 15 for p in behavior["scaleUp"]["policies"])


def test_resource_figures_match_readme(rendered):
    _, docs = rendered["minikube"]
    c = container(docs)
    pod = find(docs, "Deployment", "calories")["spec"]["template"]["spec"]
    tmp = next(v for v in pod["volumes"] if "emptyDir" in v)["emptyDir"]["sizeLimit"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    target = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["target"]["averageValue"]
    resources = c["resources"]
    row = (f"| calories | {resources['requests']['cpu']} CPU, {resources['requests']['memory']} | "
           f"{resources['limits']['cpu']} CPU, {resources['limits']['memory']} (including the {tmp} `/tmp` "
           f"emptyDir) |")
    assert row in GUIDE
    assert f"`averageValue: \"{target}\"`" in GUIDE


def generated(docs, kind, prefix):
    """The one generated object (name: prefix plus kustomize's hash suffix) of a kind."""
    found = [d for d in docs
             if d["kind"] == kind and re.fullmatch(rf"{prefix}-[a-z0-9]{{10}}", d["metadata"]["name"])]
    assert len(found) == 1, (kind, prefix, len(found))
    return found[0]


def referenced_secrets(pod):
    """The Secrets a pod template reads: envFrom, env's secretKeyRef, volumes."""
    names = set()
    for c in pod.get("initContainers", []) + pod["containers"]:
        names |= {e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e}
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
    names |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return names


def workloads(docs):
    """{name: pod template spec} of every Deployment and StatefulSet."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs
            if d["kind"] in ("Deployment", "StatefulSet")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_guard_is_the_service_image_running_calories_guard(rendered, overlay):
    _, docs = rendered[overlay]
    guard, app = find(docs, "Deployment", GUARD), find(docs, "Deployment", "calories")
    pod, c = guard["spec"]["template"]["spec"], container(docs, GUARD)
    assert guard["spec"]["replicas"] == 1
    # Two guards at once during an update are safe (idempotent moves, a lease in the store): the
    # default RollingUpdate, no Recreate.
    assert guard["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    assert c["image"] == container(docs)["image"]
    assert c["command"] == ["/opt/venv/bin/calories", "guard"] and "args" not in c
    # It serves nothing: no port, no probe.
    assert not c.get("ports") and not {"livenessProbe", "readinessProbe", "startupProbe"} & set(c)
    # Locked down as the service's pods are.
    assert pod["securityContext"] == app["spec"]["template"]["spec"]["securityContext"]
    assert c["securityContext"] == container(docs)["securityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The store from the instances' Secret (that key only), their settings, and the registry.
    env = {e["name"]: e for e in c.get("env", [])}
    store = env["FEEDBACK_DB"]["valueFrom"]["secretKeyRef"]
    app_secret = next(e["secretRef"]["name"] for e in container(docs)["envFrom"] if "secretRef" in e)
    assert store == {"name": app_secret, "key": "FEEDBACK_DB"}
    config = next(e["configMapRef"]["name"] for e in c["envFrom"] if "configMapRef" in e)
    assert config == configmap(docs, "calories-config")["metadata"]["name"]
    assert configmap(docs, "calories-config")["data"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    # The registry's write credentials: a Secret of its own, which exists, with MLflow's variables.
    writer = generated(docs, "Secret", WRITER)
    assert writer["metadata"]["name"] in {e["secretRef"]["name"] for e in c["envFrom"] if "secretRef" in e}
    variables = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
    assert writer["data"] and set(writer["data"]) <= variables


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_guard_holds_the_registry_write_credentials(rendered, overlay):
    _, docs = rendered[overlay]
    writer = generated(docs, "Secret", WRITER)["metadata"]["name"]
    holders = {name for name, template in workloads(docs).items()
               if writer in referenced_secrets(template["spec"])}
    assert holders == {GUARD}
    # The instances' pods get none of the guard's Secret, in any form.
    assert writer not in referenced_secrets(find(docs, "Deployment", "calories")["spec"]["template"]["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_takes_the_guard_or_mlflow_for_an_instance(rendered, overlay):
    _, docs = rendered[overlay]
    others = {name: t["metadata"]["labels"] for name, t in workloads(docs).items() if name != "calories"}
    app = find(docs, "Deployment", "calories")
    selectors = [find(docs, "Service", "calories")["spec"]["selector"],
                 find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                 app["spec"]["selector"]["matchLabels"],
                 *(t["labelSelector"]["matchLabels"] for t in app["spec"]["template"]["spec"]
                   ["topologySpreadConstraints"])]
    for name, labels in others.items():
        assert not [s for s in selectors if s.items() <= labels.items()], name
    assert GUARD in others
    assert find(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "calories"
    if overlay == "minikube":  # Prometheus' pod discovery keeps the instances' pods only
        config = yaml.safe_load(configmap(docs, "prometheus-config")["data"]["prometheus.yml"])
        scrape = config["scrape_configs"][0]
        keep = next(r for r in scrape["relabel_configs"] if r.get("action") == "keep"
                    and "app_kubernetes_io_name" in r["source_labels"][0])
        assert not [n for n, labels in others.items()
                    if re.fullmatch(keep["regex"], labels.get("app.kubernetes.io/name", ""))]


def test_minikube_runs_mlflow_for_the_instances_and_the_guard(rendered):
    _, docs = rendered["minikube"]
    deployment, service = find(docs, "Deployment", "mlflow"), find(docs, "Service", "mlflow")
    pod, c = deployment["spec"]["template"]["spec"], container(docs, "mlflow")
    assert c["image"] == MLFLOW_IMAGE
    dockerfile = (ROOT / "deploy" / "mlflow" / "Dockerfile").read_text()
    assert f"ARG UID={pod['securityContext']['runAsUser']}" in dockerfile
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"]
    # One server on one SQLite file, even during an update.
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # The Service reaches it, by the name and port the instances and the guard are given.
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    port = next(p for p in service["spec"]["ports"])
    assert port["targetPort"] in {p["name"] for p in c["ports"]}
    uri = configmap(docs, "calories-config")["data"]["MLFLOW_TRACKING_URI"]
    assert uri == f"http://{service['metadata']['name']}:{port['port']}"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert uri.removeprefix("http://") in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")  # its Host check
    # The backend store and the artifacts on claims: the registry outlives the pod.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    database = re.fullmatch(r"sqlite:///(/.+)/[^/]+\.db", env["MLFLOW_BACKEND_STORE_URI"]).group(1)
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for path in (database, "/mlartifacts"):  # /mlartifacts: the image's --artifacts-destination
        assert volumes[mounts[path]]["persistentVolumeClaim"]["claimName"] in claims
    assert c["startupProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_production_points_the_guard_at_an_external_mlflow(rendered):
    _, docs = rendered["production"]
    assert not [d for d in docs if d["metadata"]["name"] == "mlflow"]  # none in the cluster
    uri = configmap(docs, "calories-config")["data"]["MLFLOW_TRACKING_URI"]
    assert uri.startswith("https://") and ".svc" not in uri  # outside the cluster, over TLS


def mebibytes(quantity):
    """A memory quantity (Mi or Gi) in MiB."""
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * (1024 if unit == "Gi" else 1)


# The pod's memory during a switch (docs/deployment.md, "Pod settings"): master + 2 workers measured
# at 270 MiB (Containers), ~520 MiB once a rollout's TTIN has doubled the workers (issue 25), and
# ~60 MiB per worker for each challenger, with the aliases' two challenger slots.
MASTER_AND_TWO_WORKERS_MIB, SWITCH_MIB, CHALLENGER_MIB, CHALLENGER_SLOTS = 270, 520, 60, 2


def test_memory_holds_a_switch_with_both_challenger_slots(rendered):
    _, docs = rendered["minikube"]
    c, pod = container(docs), find(docs, "Deployment", "calories")["spec"]["template"]["spec"]
    worker = (SWITCH_MIB - MASTER_AND_TWO_WORKERS_MIB) / 2
    master = MASTER_AND_TWO_WORKERS_MIB - 2 * worker
    loaded = worker + CHALLENGER_SLOTS * CHALLENGER_MIB
    memory_tmp = sum(mebibytes(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"]
                     if v.get("emptyDir", {}).get("medium") == "Memory")  # RAM: counted against the limit
    assert mebibytes(c["resources"]["limits"]["memory"]) >= master + 4 * loaded + memory_tmp
    assert mebibytes(c["resources"]["requests"]["memory"]) >= master + 2 * loaded
    # The registry cache (MODEL_CACHE_DIR, the image's /tmp/models) is on disk, not in that RAM.
    cache = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp/models")
    volume = next(v for v in pod["volumes"] if v["name"] == cache["name"])
    assert "medium" not in volume["emptyDir"] and volume["emptyDir"]["sizeLimit"]


def test_servicemonitor_fields(rendered):
    # kubernetes-validate has no schema for the CRD. prometheus-operator's published schema (its
    # monitoring.coreos.com_servicemonitors.yaml) is not vendored here; on a cluster with the
    # operator, `kubectl apply --dry-run=server -k deploy/k8s/overlays/production` checks it. Here:
    # only fields of that schema, and the selector and port meet the rendered Service.
    _, docs = rendered["production"]
    monitor, service = find(docs, "ServiceMonitor"), find(docs, "Service", "calories")
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "selector", "namespaceSelector", "endpoints"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert spec["jobLabel"] in service["metadata"]["labels"]
    assert service["metadata"]["labels"][spec["jobLabel"]] == "calories"
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"


def prometheus(tmp_path, job):
    """A real Prometheus scraping every second with one scrape job."""
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s"}, "scrape_configs": [job]}
    return Prometheus(tmp_path, config)


def adapter_rule(docs, metric):
    rules = yaml.safe_load(configmap(docs, "adapter-config")["data"]["config.yaml"])["rules"]
    return next(r for r in rules if r["name"]["as"] == metric)


def test_hpa_metric_is_exported_scraped_and_mapped(rendered, tmp_path, model_path):
    _, docs = rendered["minikube"]
    hpa = find(docs, "HorizontalPodAutoscaler")
    metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"]
    rule = adapter_rule(docs, metric)  # the adapter serves the HPA's metric
    prom_config = configmap(docs, "prometheus-config")["data"]["prometheus.yml"]
    pod = "calories-5d8f7b9c4-x2x7q"
    scraped = f"127.0.0.1:{free_port()}"  # the probe listener, where Prometheus scrapes
    with Gunicorn(tmp_path, model_path, workers=2, env={"PROBE_BIND": scraped}) as server:
        for i in range(20):
            requests.post(server.url + "/predict", json={**RECORD, "id": i}, timeout=10)
        exported = requests.get(server.url + "/metrics", timeout=10).text
        series = re.search(r"^(\w+)", re.sub(r"\{.*", "", rule["seriesQuery"].strip("'"))).group(1)
        assert re.search(rule["name"]["matches"], series) and f"\n{series}{{" in exported
        job = yaml.safe_load(prom_config)["scrape_configs"][0]
        # Pod discovery replaced by the target it would find: the meta labels of a calories pod,
        # plus a decoy (another app's pod) that the relabeling must drop.
        meta = {"__meta_kubernetes_namespace": "calories", "__meta_kubernetes_pod_name": pod,
                "__meta_kubernetes_pod_label_app_kubernetes_io_name": "calories",
                "__meta_kubernetes_pod_container_port_name": "probes"}
        decoy = {**meta, "__meta_kubernetes_pod_label_app_kubernetes_io_name": "postgres",
                 "__meta_kubernetes_pod_name": "postgres-0"}
        del job["kubernetes_sd_configs"]
        job["static_configs"] = [{"targets": [scraped], "labels": labels} for labels in (meta, decoy)]
        with prometheus(tmp_path, job) as prom:
            wait_until(lambda: prom.api("series", **{"match[]": rule["seriesQuery"].strip("'")}), "series")
            found = prom.api("series", **{"match[]": rule["seriesQuery"].strip("'")})
            assert {(s["namespace"], s["pod"], s["job"]) for s in found} == {("calories", pod, "calories")}
            query = (rule["metricsQuery"].replace("<<.Series>>", series)
                     .replace("<<.LabelMatchers>>", f'namespace="calories",pod=~"{pod}"')
                     .replace("<<.GroupBy>>", "pod"))

            def traffic_shows():
                """Some requests, then the adapter's query: a rate once two scrapes saw them."""
                for i in range(10):
                    requests.post(server.url + "/predict", json={**RECORD, "id": i}, timeout=10)
                result = prom.api("query", query=query)["result"]
                return result and float(result[0]["value"][1]) > 0

            wait_until(traffic_shows, "the adapter's metricsQuery to see the traffic", timeout=30)
            result = prom.api("query", query=query)["result"]
    assert [r["metric"] for r in result] == [{"pod": pod}]  # one value per pod, the decoy dropped
