"""python -m bench.hpa_replay: what the cluster does meanwhile, as a replay (no cluster runs here).

A burst profile (offered req/s over time) and the per-pod capacity `make stress` measured run
through the HorizontalPodAutoscaler's algorithm as Kubernetes documents it
(https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/, "Algorithm
details" and "Configurable scaling behavior"): desired = ceil(current x value / target) with a
0.1 tolerance, missing and not-yet-ready pods, the largest proposal of several metrics, the
stabilization windows and rate policies of `behavior`, every sync period. Everything the shipped
manifests say is read from them, never copied: min/max replicas, metrics, targets and behavior
from hpa.yaml; the scrape interval from the overlay's prometheus.yml; the rate window from the
prometheus-adapter rule that serves the HPA's metric; the startup probe's period and the CPU
request and limit from deployment.yaml.

The model, per pod (1 s steps): kube-proxy spreads the load evenly over Ready pods; a pod not yet
Ready gets no traffic and no metrics. A pod admits up to its capacity and sheds the rest with a
fast 503 (the admission control issue 23 asks for); each 503 costs CPU, so the more it sheds the
less it serves. What it cannot even reject (its CPU spent on rejections alone) waits in the
kernel's backlog and is refused there, where no counter sees it. Latency of admitted requests is
an M/M/1 queue whose service rate is calibrated so that its p99 equals the SLO at the measured
capacity; while shedding, admission holds the admitted p99 at the SLO.
"""

import argparse
import collections
import dataclasses
import json
import math
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
MONITORING = K8S / "overlays" / "minikube" / "monitoring"
# Kubernetes' own defaults for a behavior field left out (the documentation's "Default Behavior").
DEFAULT_RULES = {
    "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                             {"type": "Pods", "value": 4, "periodSeconds": 15}]},
    "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                  "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
}
P99 = math.log(100)  # an exponential's p99 is ln(100) / rate


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.hpa_replay", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="120@0.5x,300@5x,600@0.5x",
                   help="SECONDS@RATE segments; RATE in req/s, or with x: times the capacity of "
                        "minReplicas pods (default 120@0.5x,300@5x,600@0.5x)")
    p.add_argument("--metric", choices=("completed", "offered"), default="completed",
                   help="what the HPA's pods metric counts: requests each pod completed (the rule before "
                        "issue 23; saturates at capacity) or offered to it, served + shed (the shipped "
                        "rule) (default completed)")
    p.add_argument("--capacity", type=float, default=800.0,
                   help="req/s one pod serves within the SLO, as make stress measured (default 800: "
                        "1 CPU, everything on, 2026-12-06)")
    p.add_argument("--stress-report", type=pathlib.Path,
                   help="take --capacity from this make stress report (its verdict)")
    p.add_argument("--slo-ms", type=float, default=50.0, help="p99 objective (default 50)")
    p.add_argument("--cpu-ms-per-request", type=float, default=1.1,
                   help="CPU per served request (default 1.1: make stress, docs/operations.md)")
    p.add_argument("--shed-cpu-ms", type=float, default=0.04,
                   help="CPU per shed request (default 0.04: refused by the worker before parsing, "
                        "what make stress's bursts left of the CPU over their refusals; 0.21 through "
                        "gunicorn's parser)")
    p.add_argument("--schedule-seconds", type=float, default=2.0,
                   help="pod creation to container start: scheduling, image already on the node "
                        "(default 2; add the image pull on a node without it)")
    p.add_argument("--ready-seconds", type=float, default=3.7,
                   help="container start to /readyz 200 (default 3.7: the image's measured 2.9-3.7 s, "
                        "docs/deployment.md)")
    p.add_argument("--sync-period", type=float, default=15.0,
                   help="--horizontal-pod-autoscaler-sync-period (default 15)")
    p.add_argument("--sync-offset", type=float, default=7.0,
                   help="when the syncs fall relative to the scrapes and the profile (default 7)")
    p.add_argument("--tolerance", type=float, default=0.1, help="HPA tolerance (default 0.1)")
    p.add_argument("--cpu-window", type=float, default=15.0,
                   help="seconds of CPU usage behind each metrics-server value (default 15, its resolution)")
    p.add_argument("--hpa", type=pathlib.Path, default=K8S / "base" / "hpa.yaml")
    p.add_argument("--deployment", type=pathlib.Path, default=K8S / "base" / "deployment.yaml")
    p.add_argument("--prometheus", type=pathlib.Path, default=MONITORING / "prometheus.yml")
    p.add_argument("--adapter", type=pathlib.Path, default=MONITORING / "adapter-config.yaml")
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "reports" / "hpa-replay.json")
    p.add_argument("--plot", type=pathlib.Path, help="draw replicas, load and shedding over time here")
    return p.parse_args(argv)


def duration(text):
    """A Prometheus duration ('15s', '1m', '1m30s', '500ms') in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration: {text!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * unit[u] for n, u in parts)


def quantity(text):
    """A Kubernetes quantity ('210', '500m', '1') as a number."""
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@dataclasses.dataclass
class Rules:
    """One direction of `behavior`: stabilization window, policies (type, value, period), selection."""

    window: float
    policies: list
    select: str


@dataclasses.dataclass
class Metric:
    """One of the HPA's metrics: 'pods' (its name, an average value) or 'cpu' (a utilization %)."""

    kind: str
    name: str
    target: float


@dataclasses.dataclass
class Spec:
    """What the replay needs of an HPA manifest."""

    min_replicas: int
    max_replicas: int
    metrics: list
    up: Rules
    down: Rules


def rules(behavior, direction):
    """A direction's Rules, Kubernetes' defaults for what the manifest leaves out."""
    given = {**DEFAULT_RULES[direction], **(behavior or {}).get(direction, {})}
    return Rules(float(given["stabilizationWindowSeconds"]),
                 [(p["type"], p["value"], float(p["periodSeconds"])) for p in given["policies"]],
                 given["selectPolicy"])


def metric(entry):
    """A Metric from one item of spec.metrics (Pods with AverageValue, or Resource cpu Utilization)."""
    if entry["type"] == "Pods":
        pods = entry["pods"]
        return Metric("pods", pods["metric"]["name"], quantity(pods["target"]["averageValue"]))
    if entry["type"] == "Resource" and entry["resource"]["name"] == "cpu":
        return Metric("cpu", "cpu", float(entry["resource"]["target"]["averageUtilization"]))
    raise ValueError(f"the replay models Pods and cpu Resource metrics, not {entry}")


def read_hpa(path):
    """The Spec of an HorizontalPodAutoscaler manifest."""
    hpa = yaml.safe_load(pathlib.Path(path).read_text())["spec"]
    return Spec(int(hpa.get("minReplicas", 1)), int(hpa["maxReplicas"]), [metric(m) for m in hpa["metrics"]],
                rules(hpa.get("behavior"), "scaleUp"), rules(hpa.get("behavior"), "scaleDown"))


def read_scrape_interval(path, job="calories"):
    """The scrape interval (s) of `job` in a Prometheus config: its own, else the global one."""
    config = yaml.safe_load(pathlib.Path(path).read_text())
    jobs = [j for j in config["scrape_configs"] if j["job_name"] == job]
    own = jobs[0].get("scrape_interval") if jobs else None
    return duration(own or config.get("global", {}).get("scrape_interval", "1m"))


def read_rate_window(path, name):
    """The range (s) of the rate() in the prometheus-adapter rule that serves the metric `name`."""
    for rule in yaml.safe_load(pathlib.Path(path).read_text())["rules"]:
        if rule.get("name", {}).get("as") == name:
            return duration(re.search(r"\[([^\]]+)\]", rule["metricsQuery"]).group(1))
    raise ValueError(f"{path}: no rule serves {name}")


def read_pod(path):
    """The startup probe's period (s), the CPU request and limit (cores) of the Deployment's container."""
    container = yaml.safe_load(pathlib.Path(path).read_text())["spec"]["template"]["spec"]["containers"][0]
    resources = container["resources"]
    return (float(container["startupProbe"].get("periodSeconds", 10)),
            quantity(resources["requests"]["cpu"]), quantity(resources["limits"]["cpu"]))


def metric_replicas(values, target, current, tolerance=0.1, missing=0, unready=0):
    """Desired replicas for one metric, as the HPA computes them; None when no pod has a value.

    `values`: the metric of each pod that has one. Pods `missing` a value count as 0 on a scale
    up and as the target on a scale down; `unready` pods count as 0, and only on a scale up.
    Neither may reverse the direction, and a change within the tolerance is none. Values are
    whole milli-units, as the metrics APIs carry them (2.0000000000000004 is no ratio of 2).
    """
    if not values:
        return None
    values, target = [round(v * 1000) for v in values], round(target * 1000)
    ratio = sum(values) / len(values) / target
    up_with_unready = unready > 0 and ratio > 1
    if not up_with_unready and not missing:
        return current if abs(1 - ratio) <= tolerance else math.ceil(ratio * len(values))
    filled = [*values, *[target if ratio < 1 else 0.0] * missing, *[0.0] * (up_with_unready and unready)]
    new = sum(filled) / len(filled) / target
    if abs(1 - new) <= tolerance or (ratio < 1 < new) or (ratio > 1 > new):
        return current
    replicas = math.ceil(new * len(filled))
    if (new < 1 and replicas > current) or (new > 1 and replicas < current):
        return current
    return replicas


class Controller:
    """The HPA's decision after the metrics: bounds, stabilization windows and rate policies."""

    def __init__(self, spec):
        self.spec = spec
        self.recommendations = []  # (t, desired before stabilization)
        self.events = {"up": [], "down": []}  # (t, replicas added or removed)

    def decide(self, t, current, proposals):
        """The new replica count, given each metric's proposal (None: that metric has no value)."""
        valid = [p for p in proposals if p is not None]
        if current > self.spec.max_replicas:
            return self._scale(t, current, self.spec.max_replicas)
        if current < self.spec.min_replicas:
            return self._scale(t, current, self.spec.min_replicas)
        # A metric without a value blocks a scale down, never a scale up.
        if not valid or (len(valid) < len(proposals) and max(valid) < current):
            return current
        desired = self._stabilize(t, current, max(valid))
        return self._scale(t, current, self._limit(t, current, desired))

    def _stabilize(self, t, current, desired):
        """Within the windows: no lower than the lowest recent scale-up recommendation, no higher
        than the highest recent scale-down one."""
        up = min([r for s, r in self.recommendations if s > t - self.spec.up.window] + [desired])
        down = max([r for s, r in self.recommendations if s > t - self.spec.down.window] + [desired])
        self.recommendations.append((t, desired))
        longest = max(self.spec.up.window, self.spec.down.window)
        self.recommendations = [(s, r) for s, r in self.recommendations if s > t - longest]
        return min(max(current, up), down)

    def _limit(self, t, current, desired):
        """The desired count within the policies and min/max replicas."""
        if desired > current:
            ceiling = max(current, self._bound(t, current, self.spec.up, +1))
            return min(desired, ceiling, self.spec.max_replicas)
        if desired < current:
            floor = min(current, self._bound(t, current, self.spec.down, -1))
            return max(desired, floor, self.spec.min_replicas)
        return desired

    def _bound(self, t, current, rules, sign):
        """The furthest count the policies allow from `current` in direction `sign`."""
        if rules.select == "Disabled":
            return current
        proposed = []
        for kind, value, period in rules.policies:
            added = sum(n for s, n in self.events["up"] if s > t - period)
            removed = sum(n for s, n in self.events["down"] if s > t - period)
            start = current - added + removed  # the count at the start of the policy's period
            if kind == "Pods":
                proposed.append(start + sign * value)
            elif sign > 0:  # rounded up, or a small count could never grow
                proposed.append(math.ceil(start * (1 + value / 100)))
            else:  # truncated: the change is rounded up
                proposed.append(int(start * (1 - value / 100)))
        pick = max if (rules.select == "Max") == (sign > 0) else min
        return pick(proposed)

    def _scale(self, t, current, new):
        """Record a change for the policies' periods."""
        if new != current:
            self.events["up" if new > current else "down"].append((t, abs(new - current)))
        return new


@dataclasses.dataclass
class Pod:
    """One pod: when it was created, runs (past Pending) and is Ready; its counters and samples."""

    created: float
    running: float
    ready: float
    served: float = 0.0
    offered: float = 0.0
    samples: list = dataclasses.field(default_factory=list)  # (t, served, offered) scraped
    cpu: collections.deque = dataclasses.field(default_factory=collections.deque)  # (t, cores)


class Model:
    """Per pod and second: what is admitted, shed and refused, the CPU it takes, its latency."""

    def __init__(self, capacity, slo_ms, cpu_ms, shed_cpu_ms, limit):
        self.capacity, self.limit = capacity, limit
        self.cost, self.shed_cost = cpu_ms / 1000, shed_cpu_ms / 1000
        self.k = P99 / (slo_ms / 1000)  # the latency rate at which p99 is the SLO
        self.rate = capacity + self.k  # M/M/1 service rate: p99 = SLO at the capacity

    def load(self, offered):
        """(served, shed, refused, latency rate of the admitted: p99 = ln 100 / it) for `offered` req/s."""
        if offered <= self.capacity:
            return offered, 0.0, 0.0, self.rate - offered
        taken = min(offered, self.limit / self.shed_cost)  # beyond: the CPU cannot even reject
        # The CPU share spent on rejections slows the admitted; admission keeps their p99 at the SLO.
        served = (self.rate * (1 - taken * self.shed_cost / self.limit) - self.k) / (
            1 - self.rate * self.shed_cost / self.limit)
        served = min(self.capacity, max(0.0, served))
        return served, taken - served, offered - taken, self.k

    def cpu(self, served, shed):
        """Cores used."""
        return min(self.limit, served * self.cost + shed * self.shed_cost)


def profile(text, unit):
    """[(seconds, req/s)] from 'SECONDS@RATE,...'; a RATE ending in x is in units of `unit` req/s."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        seconds, _, rate = part.partition("@")
        out.append((float(seconds), float(rate[:-1]) * unit if rate.endswith("x") else float(rate)))
    return out


def p99_ms(parts):
    """p99 (ms) of a mixture of exponential latencies: [(weight, rate)]; None without weight."""
    total = sum(w for w, _ in parts)
    if not total:
        return None
    low, high = 0.0, P99 / min(r for _, r in parts)
    for _ in range(60):
        mid = (low + high) / 2
        if sum(w * math.exp(-r * mid) for w, r in parts) / total > 0.01:
            low = mid
        else:
            high = mid
    return round(high * 1000, 1)


class Replay:
    """The cluster, second by second: pods, Prometheus' scrapes, the adapter's rate, the HPA's syncs."""

    def __init__(self, args, spec=None):
        self.args = args
        self.spec = spec or read_hpa(args.hpa)
        pods_metric = next(m for m in self.spec.metrics if m.kind == "pods")
        self.scrape = read_scrape_interval(args.prometheus)
        self.window = read_rate_window(args.adapter, pods_metric.name)
        self.probe, self.request, limit = read_pod(args.deployment)
        self.model = Model(args.capacity, args.slo_ms, args.cpu_ms_per_request, args.shed_cpu_ms, limit)
        self.controller = Controller(self.spec)
        self.pods = []
        self.warmup = self.window + 2 * self.scrape  # full rate windows before t = 0

    def start(self, t):
        """A new pod: Pending while scheduled, then Ready at the first startup probe after /readyz."""
        running = t + self.args.schedule_seconds
        return Pod(t, running, running + math.ceil(self.args.ready_seconds / self.probe) * self.probe)

    def run(self):
        """The replay's timeline, syncs and phases."""
        segments = profile(self.args.profile, self.args.capacity * self.spec.min_replicas)
        self.pods = [self.start(-self.warmup - 60) for _ in range(self.spec.min_replicas)]
        timeline, syncs, t, end = [], [], -self.warmup, sum(s for s, _ in segments)
        while t < end:
            if t % self.scrape == 0:
                self._scrape(t)
            if (t - self.args.sync_offset) % self.args.sync_period == 0:
                syncs.append(self._sync(t))
            row = self._traffic(t, rate_at(segments, max(t, 0.0)))
            if t >= 0:
                timeline.append(row)
            t += 1
        return {"timeline": timeline, "syncs": [s for s in syncs if s["t"] >= 0],
                "phases": phases(timeline, segments)}

    def _traffic(self, t, offered):
        """One second of load spread over the Ready pods."""
        ready = [p for p in self.pods if p.ready <= t]
        row = {"t": t, "offered": offered, "replicas": len(self.pods), "ready": len(ready),
               "served": 0.0, "shed": 0.0, "refused": 0.0 if ready else offered, "latency": []}
        for pod in ready:
            served, shed, refused, rate = self.model.load(offered / len(ready))
            pod.served += served
            pod.offered += served + shed
            pod.cpu.append((t, self.model.cpu(served, shed)))
            row["served"] += served
            row["shed"] += shed
            row["refused"] += refused
            row["latency"].append((served, rate))
        for pod in self.pods:
            while pod.cpu and pod.cpu[0][0] <= t - self.args.cpu_window:
                pod.cpu.popleft()
        return row

    def _scrape(self, t):
        """Prometheus scrapes every Ready pod (a pod that does not answer yet has no series)."""
        for pod in self.pods:
            if pod.ready <= t:
                pod.samples.append((t, pod.served, pod.offered))
                pod.samples = [s for s in pod.samples if s[0] > t - self.window - self.scrape]

    def _rate(self, pod, t):
        """The adapter's rate() at t: the slope between the first and last samples in the window
        (None with fewer than two); Prometheus' extrapolation to the window's edges left out."""
        inside = [s for s in pod.samples if s[0] > t - self.window]
        if len(inside) < 2:
            return None
        column = 1 if self.args.metric == "completed" else 2
        return (inside[-1][column] - inside[0][column]) / (inside[-1][0] - inside[0][0])

    def _sync(self, t):
        """One HPA sync: each metric's proposal, then the controller's decision, then the pods."""
        current = len(self.pods)
        proposals, seen = [], {}
        for m in self.spec.metrics:
            values, missing, unready = self._pods_values(t) if m.kind == "pods" else self._cpu_values(t)
            proposals.append(metric_replicas(values, m.target, current, self.args.tolerance,
                                             missing, unready))
            seen[m.name] = round(sum(values) / len(values), 1) if values else None
        new = self.controller.decide(t, current, proposals)
        self._resize(t, new)
        return {"t": t, "replicas": current, "seen": seen, "proposals": proposals, "decided": new}

    def _pods_values(self, t):
        """The pods metric: values, pods missing one (Running, no series yet), pods still Pending."""
        pending = [p for p in self.pods if p.running > t]
        rates = [self._rate(p, t) for p in self.pods if p.running <= t]
        values = [r for r in rates if r is not None]
        return values, len(rates) - len(values), len(pending)

    def _cpu_values(self, t):
        """CPU utilization (% of the request) of the pods Ready for a whole metrics window; the
        others are not yet ready for CPU, which the HPA sets aside."""
        usable = [p for p in self.pods if p.ready <= t - self.args.cpu_window]
        values = [100 * sum(c for _, c in p.cpu) / self.args.cpu_window / self.request for p in usable]
        return values, 0, len(self.pods) - len(usable)

    def _resize(self, t, new):
        """Create pods, or delete the least ready and newest first (as a ReplicaSet does)."""
        while len(self.pods) < new:
            self.pods.append(self.start(t))
        if len(self.pods) > new:
            self.pods.sort(key=lambda p: (p.ready <= t, -p.created))
            del self.pods[:len(self.pods) - new]


def rate_at(segments, t):
    """The profile's offered rate at t (0 after its end)."""
    for seconds, rate in segments:
        if t < seconds:
            return rate
        t -= seconds
    return 0.0


def phases(timeline, segments):
    """Per profile segment: requests offered, served, shed, refused, the admitted p99, replicas."""
    out, start = [], 0.0
    for seconds, rate in segments:
        rows = [r for r in timeline if start <= r["t"] < start + seconds]
        total = {k: round(sum(r[k] for r in rows)) for k in ("offered", "served", "shed", "refused")}
        out.append({"from_s": start, "to_s": start + seconds, "offered_rps": round(rate, 1), **total,
                    "admitted_p99_ms": p99_ms([part for r in rows for part in r["latency"]]),
                    "replicas_end": rows[-1]["replicas"], "ready_end": rows[-1]["ready"],
                    "replicas_max": max(r["replicas"] for r in rows),
                    "seconds_shedding": sum(r["shed"] + r["refused"] > 0 for r in rows)})
        start += seconds
    return out


def capacity_from(report):
    """The capacity (req/s) of a make stress report."""
    capacity = json.loads(pathlib.Path(report).read_text())["verdict"]["capacity_rps"]
    if not capacity:
        raise ValueError(f"{report}: the stress run found no capacity")
    return float(capacity)


def inputs(replay):
    """What the replay took from where: the report's first section."""
    a, s = replay.args, replay.spec
    return {"metric": a.metric, "capacity_rps": a.capacity, "slo_ms": a.slo_ms, "profile": a.profile,
            "hpa": {"file": str(a.hpa), "min": s.min_replicas, "max": s.max_replicas,
                    "metrics": [dataclasses.asdict(m) for m in s.metrics],
                    "scale_up": dataclasses.asdict(s.up), "scale_down": dataclasses.asdict(s.down)},
            "scrape_interval_s": replay.scrape, "rate_window_s": replay.window,
            "sync_period_s": a.sync_period, "tolerance": a.tolerance,
            "pod_start_s": replay.start(0.0).ready, "cpu_request": replay.request,
            "cpu_limit": replay.model.limit, "cpu_ms_per_request": a.cpu_ms_per_request,
            "shed_cpu_ms": a.shed_cpu_ms,
            "model": "per-pod admission at capacity, 503s costing CPU; M/M/1, p99 = SLO at capacity"}


def phase_line(p):
    """One phase of the report."""
    return (f"{p['from_s']:6g}-{p['to_s']:<6g} s at {p['offered_rps']:7g} req/s: "
            f"replicas {p['replicas_end']:3d} (ready {p['ready_end']}, max {p['replicas_max']}), "
            f"served {p['served']}, shed {p['shed']}, "
            f"refused {p['refused']} of {p['offered']}; shedding {p['seconds_shedding']} s; admitted p99 "
            f"{p['admitted_p99_ms']} ms")


def plot(report, path):
    """Replicas, offered load, ready capacity and shedding over time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows, capacity = report["timeline"], report["inputs"]["capacity_rps"]
    t = [r["t"] for r in rows]
    fig, (load, pods) = plt.subplots(2, 1, sharex=True, figsize=(7, 5), dpi=90)
    load.plot(t, [r["offered"] for r in rows], label="offered")
    load.plot(t, [r["ready"] * capacity for r in rows], "--", label="capacity of Ready pods")
    load.fill_between(t, 0, [r["shed"] + r["refused"] for r in rows], color="red", alpha=0.3,
                      label="shed + refused")
    load.set_ylabel("req/s")
    load.legend(fontsize=8)
    pods.step(t, [r["replicas"] for r in rows], where="post", label="replicas (HPA)")
    pods.step(t, [r["ready"] for r in rows], where="post", label="Ready")
    pods.set_ylabel("pods")
    pods.set_xlabel("seconds (replay, not a cluster run)")
    pods.legend(fontsize=8)
    load.set_title(f"HPA replay, metric: {report['inputs']['metric']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv=None):
    """Run the replay; print the phases, write JSON (and the plot); 1 when an input cannot be read."""
    args = parse(argv)
    try:
        if args.stress_report:
            args.capacity = capacity_from(args.stress_report)
        replay = Replay(args)
        report = replay.run()
    except (OSError, ValueError, KeyError, StopIteration, yaml.YAMLError) as exc:
        print(f"hpa_replay: {exc!r}", file=sys.stderr)
        return 1
    report = {"inputs": inputs(replay), **report}
    for row in report["timeline"]:
        row["latency"] = p99_ms(row["latency"])  # the second's admitted p99, ms
    print(f"HPA replay (not a cluster run), metric {args.metric}, capacity {args.capacity:g} req/s per pod, "
          f"pod start {report['inputs']['pod_start_s']:g} s")
    for p in report["phases"]:
        print(phase_line(p))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.json}")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        print(f"plot: {args.plot}" if plot(report, args.plot) else
              "plot skipped: matplotlib is not installed (pip install -r requirements-plot.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
