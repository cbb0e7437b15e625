"""The HPA replay: its arithmetic is the HPA's as Kubernetes documents it, it reads the shipped
manifests (a change to them changes the replay), and it shows what the choice of metric does.

The documented examples come from "Horizontal Pod Autoscaling",
https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/ ("Algorithm details",
"Scaling policies", "Stabilization window", "Default Behavior", "Example: limit scale down rate",
"Example: disable scale down").
"""

import json

import pytest
import yaml
from support import ROOT

from bench import hpa_replay
from bench.hpa_replay import Controller, Spec, metric_replicas, rules

SHIPPED_HPA = ROOT / "deploy" / "k8s" / "base" / "hpa.yaml"


def test_desired_replicas_follow_the_documented_ratio_and_tolerance():
    # 200m against a desired 100m doubles the replicas; 50m halves them.
    assert metric_replicas([0.2] * 3, 0.1, current=3) == 6
    assert metric_replicas([0.05] * 4, 0.1, current=4) == 2
    # A ratio within the tolerance (0.1) is no change at all; just past it is.
    assert metric_replicas([0.105] * 4, 0.1, current=4) == 4
    assert metric_replicas([0.095] * 4, 0.1, current=4) == 4
    assert metric_replicas([0.12] * 4, 0.1, current=4) == 5
    assert metric_replicas([], 0.1, current=4) is None  # no pod has a value: the metric is invalid


def test_missing_metrics_and_not_yet_ready_pods_dampen_the_scale_as_documented():
    # Missing pods count as 100 % of the desired value on a scale down, 0 % on a scale up.
    assert metric_replicas([0.05, 0.05], 0.1, current=4, missing=2) == 3  # (5+5+10+10)/4 = 7.5 -> 3
    # (20+20+0)/3 against 10 on 3 pods: 4, where current x ratio of the reporting pods would say 6.
    assert metric_replicas([0.2, 0.2], 0.1, current=3, missing=1) == 4
    # ... and they cannot reverse the direction: a scale up that becomes a scale down is none.
    assert metric_replicas([0.12], 0.1, current=4, missing=3) == 4
    # Not-yet-ready pods count as 0 %, and only when the others ask for a scale up.
    assert metric_replicas([0.2, 0.2], 0.1, current=4, unready=2) == 4  # (20+20+0+0)/4 = 10: within
    assert metric_replicas([0.3, 0.3], 0.1, current=4, unready=2) == 6  # 15/10 x 4
    # On a scale down they are set aside: 95 % of the target on the 2 ready pods is within tolerance.
    assert metric_replicas([0.095, 0.095], 0.1, current=4, unready=2) == 4


def spec(up=None, down=None, low=1, high=100):
    """A Spec with Kubernetes' default behavior for each direction not given."""
    behavior = {k: v for k, v in (("scaleUp", up), ("scaleDown", down)) if v}
    return Spec(low, high, [], rules(behavior, "scaleUp"), rules(behavior, "scaleDown"))


def timeline(controller, current, desired, syncs, every):
    """Replica counts after each sync of `every` s, every metric asking for `desired`."""
    out = []
    for i in range(syncs):
        current = controller.decide(i * every, current, [desired])
        out.append(current)
    return out


def test_scale_down_policies_follow_the_documented_example():
    # Pods 4 and Percent 10 per 60 s, the largest change selected: from 80 to 10, the first step
    # removes 8, the next 10 % of 72 = 7.2, rounded up to 8; below 40 replicas, 4 at a time.
    down = {"policies": [{"type": "Pods", "value": 4, "periodSeconds": 60},
                         {"type": "Percent", "value": 10, "periodSeconds": 60}]}
    steps = timeline(Controller(spec(down=down)), 80, 10, 20, every=60)
    assert steps[:2] == [72, 64]
    below = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if a < 40 and b > 10]
    assert below and all(a - b == 4 for a, b in below)
    assert steps[-1] == 10


def test_select_policy_min_and_disabled_as_documented():
    # Percent 10 or Pods 5 per minute, Min selected: never more than 5 pods a minute.
    down = {"selectPolicy": "Min", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 60},
                                               {"type": "Pods", "value": 5, "periodSeconds": 60}]}
    assert timeline(Controller(spec(down=down)), 100, 10, 3, every=60) == [95, 90, 85]
    # 10 % is less: 3 of 30, then 2.7 of 27, rounded up to 3 as in the documentation's example.
    assert timeline(Controller(spec(down=down)), 30, 10, 2, every=60) == [27, 24]
    assert timeline(Controller(spec(down={"selectPolicy": "Disabled"})), 30, 10, 3, every=60) == [30] * 3


def test_default_scale_up_doubles_or_adds_four_every_15_s():
    # Default behavior: scale up at once, by 100 % or 4 pods per 15 s, whichever is more.
    assert timeline(Controller(spec()), 1, 40, 5, every=15) == [5, 10, 20, 40, 40]
    # Within one 15 s period the pods added already count against the policy.
    controller = Controller(spec())
    assert controller.decide(0, 2, [40]) == 6
    assert controller.decide(5, 6, [40]) == 6
    assert controller.decide(15, 6, [40]) == 12


def test_scale_down_stabilization_keeps_the_highest_recommendation_of_the_window():
    # Default scale-down window 300 s: the highest desired state of the past 5 minutes holds.
    controller = Controller(spec())
    assert controller.decide(0, 10, [10]) == 10
    assert [controller.decide(t, 10, [4]) for t in range(15, 300, 15)] == [10] * 19
    assert controller.decide(300, 10, [4]) == 4  # the recommendation of t=0 has left the window
    # A window of 60 s, as the documentation's example sets it.
    short = Controller(spec(down={"stabilizationWindowSeconds": 60}))
    short.decide(0, 10, [10])
    assert [short.decide(t, 10, [4]) for t in (15, 45, 60)] == [10, 10, 4]


def test_a_metric_without_value_blocks_a_scale_down_never_a_scale_up():
    controller = Controller(spec())
    assert controller.decide(0, 6, [2, None]) == 6
    assert controller.decide(15, 6, [9, None]) == 9
    assert controller.decide(30, 9, [None, None]) == 9
    # The largest proposal of several metrics wins.
    assert Controller(spec()).decide(0, 4, [5, 7]) == 7


def replay(tmp_path, *flags, name="replay"):
    """python -m bench.hpa_replay with flags; its JSON report."""
    out = tmp_path / f"{name}.json"
    assert hpa_replay.main([*flags, "--json", str(out)]) == 0
    return json.loads(out.read_text())


def first(report, predicate):
    """The first second of the timeline where predicate(row) holds, else None."""
    return next((r["t"] for r in report["timeline"] if predicate(r)), None)


def test_the_replay_reads_the_shipped_hpa_and_a_changed_hpa_changes_it(tmp_path):
    shipped = yaml.safe_load(SHIPPED_HPA.read_text())
    base = replay(tmp_path, "--metric", "offered", name="shipped")
    assert base["inputs"]["hpa"]["max"] == shipped["spec"]["maxReplicas"]
    assert max(r["replicas"] for r in base["timeline"]) == shipped["spec"]["maxReplicas"]
    # Fewer pods at most, one pod a minute up, and a lower target: a different timeline.
    changed = yaml.safe_load(SHIPPED_HPA.read_text())
    changed["spec"]["maxReplicas"] = 6
    changed["spec"]["behavior"]["scaleUp"]["policies"] = [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    path = tmp_path / "hpa.yaml"
    path.write_text(yaml.safe_dump(changed))
    other = replay(tmp_path, "--metric", "offered", "--hpa", str(path), name="changed")
    assert [r["replicas"] for r in other["timeline"]] != [r["replicas"] for r in base["timeline"]]
    assert max(r["replicas"] for r in other["timeline"]) == 6
    ups = [s for s in other["syncs"] if s["decided"] > s["replicas"]]
    assert ups and all(s["decided"] - s["replicas"] == 1 for s in ups)
    assert all(b - a >= 60 for a, b in zip([s["t"] for s in ups], [s["t"] for s in ups[1:]], strict=False))
    assert other["phases"][1]["shed"] > base["phases"][1]["shed"]


@pytest.mark.parametrize(("config", "old", "new"), [
    ("adapter-config.yaml", "[1m]", "[5m]"),  # the adapter's rate window
    ("prometheus.yml", "scrape_interval: 15s", "scrape_interval: 60s"),  # the scrape interval
])
def test_a_slower_metric_pipeline_in_the_shipped_configs_slows_the_replay(tmp_path, config, old, new):
    source = ROOT / "deploy" / "k8s" / "overlays" / "minikube" / "monitoring" / config
    assert old in source.read_text()
    path = tmp_path / config
    path.write_text(source.read_text().replace(old, new))
    flag = "--adapter" if config.startswith("adapter") else "--prometheus"
    base = replay(tmp_path, "--metric", "offered", name="shipped")
    slow = replay(tmp_path, "--metric", "offered", flag, str(path), name="slow")
    started, most = base["phases"][1]["from_s"], base["inputs"]["hpa"]["max"]
    top = [first(r, lambda row: row["t"] >= started and row["replicas"] == most) for r in (base, slow)]
    assert top[0] is not None and (top[1] is None or top[1] > top[0])
    assert slow["phases"][1]["shed"] > base["phases"][1]["shed"]


def test_the_offered_load_metric_scales_faster_than_the_completed_one_under_a_5x_burst(tmp_path):
    runs = {m: replay(tmp_path, "--metric", m, "--profile", "120@0.5x,300@5x,300@0.5x", name=m)
            for m in ("completed", "offered")}
    burst = {m: r["phases"][1] for m, r in runs.items()}
    started = burst["offered"]["from_s"]
    # Completed requests saturate at the capacity: that metric sees at most 300/210 per sync.
    most = runs["offered"]["inputs"]["hpa"]["max"]
    top = {m: first(r, lambda row: row["t"] >= started and row["ready"] == most) for m, r in runs.items()}
    assert top["offered"] is not None and (top["completed"] is None or top["offered"] < top["completed"])
    assert burst["offered"]["shed"] < burst["completed"]["shed"]
    assert burst["offered"]["seconds_shedding"] < burst["completed"]["seconds_shedding"]
    first_sync = [s for s in runs["offered"]["syncs"] if s["t"] > started + 15][0]
    assert first_sync["decided"] >= 2 * first_sync["replicas"]  # the policies' cap in one sync


def test_the_cpu_target_scales_a_slower_host_whose_capacity_is_below_the_rate_target(tmp_path):
    # The slow hour of 2026-12-07: 500 req/s per pod at 1.5 ms of CPU each, the load steady at
    # the rate target (560 a pod on 2 pods): the rate alone never scales, the CPU metric must.
    slow = ("--metric", "offered", "--capacity", "500", "--cpu-ms-per-request", "1.5",
            "--profile", "60@1120,600@1120")
    shipped = replay(tmp_path, *slow, name="shipped")
    steady = shipped["phases"][1]
    assert steady["replicas_end"] == 3 and steady["shed"] == 0
    # At the CPU target shipped before (70 %), each pod uses 75 % of its CPU, inside the
    # tolerance: 2 pods shed for as long as the load lasts.
    before = yaml.safe_load(SHIPPED_HPA.read_text())
    cpu = next(m for m in before["spec"]["metrics"] if m["type"] == "Resource")
    cpu["resource"]["target"]["averageUtilization"] = 70
    path = tmp_path / "hpa.yaml"
    path.write_text(yaml.safe_dump(before))
    old = replay(tmp_path, *slow, "--hpa", str(path), name="before")["phases"][1]
    assert old["replicas_end"] == 2 and old["seconds_shedding"] == 600
    assert old["shed"] > 0.1 * old["offered"]


def test_pods_not_yet_ready_take_no_traffic_and_a_slow_start_sheds_longer(tmp_path):
    quick = replay(tmp_path, "--metric", "offered", name="quick")
    slow = replay(tmp_path, "--metric", "offered", "--ready-seconds", "60", name="slow")
    start, capacity = slow["inputs"]["pod_start_s"], slow["inputs"]["capacity_rps"]
    assert start >= 60
    # Until the pods of the first scale up are Ready, only the pods before it serve.
    up = next(s for s in slow["syncs"] if s["decided"] > s["replicas"])
    waiting = [r for r in slow["timeline"] if up["t"] <= r["t"] < up["t"] + start]
    assert waiting and all(r["served"] <= up["replicas"] * capacity + 1e-6 for r in waiting)
    assert any(r["shed"] > 0 for r in waiting)
    assert all(r["served"] + r["shed"] + r["refused"] == pytest.approx(r["offered"])
               for r in slow["timeline"])
    assert slow["phases"][1]["shed"] > quick["phases"][1]["shed"]


def test_what_a_pod_cannot_even_reject_is_refused_where_no_counter_sees_it():
    model = hpa_replay.Model(capacity=300, slo_ms=50, cpu_ms=2.9, shed_cpu_ms=0.21, limit=1.0)
    assert model.load(200)[1:3] == (0.0, 0.0)  # below capacity: nothing shed, nothing refused
    served, shed, refused, _ = model.load(1500)
    assert 0 < served < 300 and shed > 0 and refused == 0  # each 503 costs CPU the served lack
    served, shed, refused, _ = model.load(6000)
    assert refused > 0 and served + shed == pytest.approx(1000 / 0.21)  # what the CPU can reject


def test_the_replay_writes_its_plot(tmp_path):
    out = tmp_path / "replay.png"
    replay(tmp_path, "--plot", str(out))
    assert out.stat().st_size > 10_000
