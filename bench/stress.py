"""make stress: capacity at a latency SLO under open-loop load, then bursts at multiples of it.

A step ramp of offered load (the simulator's mix: predictions and their delayed feedback) finds
the knee and the capacity: the highest offered rate with p99 <= --slo-ms and >= 99.9 % success.
Bursts at k x that capacity then show what became of their requests (offered, served, shed,
timed out, admitted p99) and how long p99 takes to recover. Feedback of a failed prediction is
never sent, as a real client would not send it.
Without --url it starts the service itself (one instance, or nginx in front of several on one
PostgreSQL), pinned to its own CPU, with the generator on another: figures are per server CPU.
"""

import argparse
import contextlib
import json
import os
import pathlib
import sys
import tempfile
import time

from loopback.gunicorn import Instance
from loopback.nginx import Nginx, NginxError
from loopback.postgres import PostgresError, throwaway
from loopback.process import free_port
from simulator.records import DataError, load

from . import capacity, openloop
from .run import _machine
from .traffic import Host, Prober, Sampler, Traffic, children, cpu_seconds

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROBE_SECONDS = 0.1  # /healthz and /readyz of each probe listener, ten times a second
# Issue 23's targets for a burst: served >= 90 % of capacity, shed answers fast, probes fast; the
# admitted p99 may reach 2x the SLO from a 10x burst on.
SERVED_SHARE, SHED_P99_MS, PROBE_P99_MS, RECOVERY_S = 0.9, 10.0, 100.0, 2.0
SAMPLE = ROOT / "handout_from DS_agent" / "data_sample" / "train.csv"


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.stress", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="drive this service (base URL) instead of starting one")
    p.add_argument("--probe-url", action="append", default=[],
                   help="with --url: a probe listener to time /healthz and /readyz on during the run "
                        "(repeatable; default: the --metrics-url ones)")
    p.add_argument("--metrics-url", action="append", default=[],
                   help="an instance to sample /metrics from during the run (repeatable; default: "
                        "the instances this tool starts)")
    p.add_argument("--target", choices=("instance", "nginx"), default="instance",
                   help="without --url: one instance, or nginx in front of --instances on PostgreSQL")
    p.add_argument("--instances", type=int, default=2, help="instances behind nginx (default 2)")
    p.add_argument("--workers", type=int,
                   help="gunicorn workers per instance (default: two per server CPU, shared among the "
                        "instances, at least one)")
    p.add_argument("--server-cpus", default="0", help="CPUs of the started service (default 0)")
    p.add_argument("--generator-cpus", default="1", help="CPUs of the load generator (default 1)")
    p.add_argument("--slo-ms", type=float, default=50.0, help="p99 latency objective (default 50)")
    p.add_argument("--rates", help="comma-separated offered rates (req/s) of the ramp, instead of "
                                   "--start-rps/--step-rps/--max-rps")
    p.add_argument("--start-rps", type=float, default=100.0)
    p.add_argument("--step-rps", type=float, default=100.0)
    p.add_argument("--max-rps", type=float, default=4000.0)
    p.add_argument("--step-seconds", type=float, default=5.0, help="seconds per ramp step (default 5)")
    p.add_argument("--bursts", default="5,10",
                   help="burst factors x capacity; empty for none (default 5,10: issue 23's targets)")
    p.add_argument("--burst-seconds", type=float, default=30.0)
    p.add_argument("--burst-capacity", type=float,
                   help="req/s the burst factors multiply, instead of the capacity the ramp found")
    p.add_argument("--burst-base", type=float, default=0.5, help="load around a burst, x capacity (0.5)")
    p.add_argument("--recovery-seconds", type=float, default=20.0)
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="unreported warm-up (default 2)")
    p.add_argument("--feedback-fraction", type=float, default=1.0)
    p.add_argument("--feedback-delay", type=float, default=1.0)
    p.add_argument("--poisson", action="store_true", help="Poisson arrivals instead of evenly spaced")
    p.add_argument("--timeout", type=float, default=5.0, help="client timeout, s (default 5)")
    p.add_argument("--sample-seconds", type=float, default=1.0,
                   help="interval of the server-side /metrics samples, s (default 1; a step needs two)")
    p.add_argument("--max-outstanding", type=int, default=4000)
    p.add_argument("--data", type=pathlib.Path, default=SAMPLE)
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "reports" / "stress.json")
    p.add_argument("--plot", type=pathlib.Path, default=ROOT / "reports" / "stress.png")
    return p.parse_args(argv)


def cpus(spec):
    """'0,2-3' -> {0, 2, 3}."""
    out = set()
    for part in filter(None, spec.split(",")):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def workers(args):
    """gunicorn workers per started instance: --workers, or two per server CPU shared among the
    instances, the ratio of the pods (WEB_CONCURRENCY is limits.cpu over 500m) and of one instance
    on its CPU. Two instances of two on one CPU are four workers, six processes with nginx and
    PostgreSQL taking the CPU in turn: twice the pods' density, and behind nginx they served less,
    later (operations.md, Overload)."""
    if args.workers is not None:
        return args.workers
    return max(1, 2 * len(cpus(args.server_cpus)) // instance_count(args))


def instance_count(args):
    """How many instances the tool starts: --instances behind nginx, else one."""
    return args.instances if args.target == "nginx" else 1


def start_service(args, stack, work, per_instance):
    """Start the target on the server CPUs (children inherit the affinity); its URL and the probe
    listeners' (PROBE_BIND, as the Kubernetes manifests set it: probes and scrapes never wait in
    the burst's backlog)."""
    env = {"ACCESS_LOG": os.environ.get("ACCESS_LOG", "-")}
    if args.target == "nginx":
        cluster = stack.enter_context(throwaway("calories-stress-pg-"))
        env["FEEDBACK_DB"] = cluster.create_database("calories_stress")
    instances, probes = [], []
    for i in range(instance_count(args)):
        probes.append(f"127.0.0.1:{free_port()}")
        instance = Instance(work / f"instance-{i + 1}", per_instance, {**env, "PROBE_BIND": probes[-1]})
        stack.callback(instance.stop)
        instances.append(instance.start(timeout=180))
    urls = [i.url for i in instances]
    probes = [f"http://{p}" for p in probes]
    if args.target == "nginx":
        nginx = Nginx(work / "nginx", [u.split("//")[1] for u in urls])
        stack.callback(nginx.stop)
        return nginx.start().url, probes
    return urls[0], probes


def ramp_rates(args):
    """The ramp's offered rates."""
    if args.rates:
        return [float(r) for r in args.rates.split(",")]
    n = int((args.max_rps - args.start_rps) // args.step_rps) + 1
    return [args.start_rps + i * args.step_rps for i in range(n)]


def phase(args, exe, url, traffic, sampler, segments):
    """Run one schedule to its end; its results, the server-side figures sampled meanwhile, and
    when it started (monotonic)."""
    shots = traffic.phase(segments)
    started = time.monotonic()
    results = openloop.run(exe, url, shots, args.max_outstanding, args.timeout)
    traffic.settle(results)
    return results, sampler.between(started, started + sum(s for _, s in segments)), started


def ramp(args, exe, url, traffic, sampler, host):
    """Steps of constant offered load, until two in a row miss the SLO or the generator falls short."""
    steps, missed = [], 0
    for rate in ramp_rates(args):
        # CPU of what this tool started (service, nginx, PostgreSQL), none with --url: per request,
        # the capacity of one CPU whatever else runs on it.
        before = cpu_seconds(children(os.getpid()))
        results, server, started = phase(args, exe, url, traffic, sampler, [(rate, args.step_seconds)])
        used = cpu_seconds(children(os.getpid())) - before
        step = capacity.step_figures(results, rate, args.step_seconds, args.slo_ms) | {"server": server}
        step["host_steal_ms"] = host.steal_ms(started, started + args.step_seconds)
        ok = sum(r.ok for r in results)
        step["server_cpu_ms_per_request"] = round(1000 * used / ok, 3) if used and ok else None
        steps.append(step)
        print(step_line(step), flush=True)
        missed = missed + 1 if not step["within_slo"] else 0
        if missed == 2 or not step["offered"]:
            break
        time.sleep(1.0)  # let the backlog of a missed step drain before the next
    return steps


def step_line(step):
    """One progress line per step."""
    lat, server = step["latency_ms"], step["server"] or {}
    signals = (f"  in-flight {server['inflight_mean']:.2f}  Little {server['little_concurrency']:.2f}"
               f"  scrape max {server['scrape_max_ms']:.0f} ms" if server else "")
    if step["server_cpu_ms_per_request"]:
        signals += f"  server CPU {step['server_cpu_ms_per_request']:.2f} ms/request"
    if step.get("host_steal_ms"):
        signals += f"  host steal {step['host_steal_ms']:g} ms"
    return (f"{step['offered_rps']:7.0f} req/s offered, {step['achieved_send_rps'] or 0:7.1f} sent, "
            f"{step['throughput_rps']:7.1f} ok/s  p50 {lat['p50']:8.2f}  p95 {lat['p95']:8.2f}  "
            f"p99 {lat['p99']:8.2f} ms  success {100 * step['success']:6.2f} %"
            f"{'' if step['offered'] else '  NOT OFFERED'}{signals}")


def bursts(args, exe, url, traffic, sampler, prober, host, cap):
    """Each burst: base load, k x capacity for --burst-seconds, base load again to recover."""
    out = []
    for factor in [float(f) for f in args.bursts.split(",") if f.strip()]:
        if out:
            time.sleep(3.0)  # let the previous burst's backlog drain
        base, lead = args.burst_base * cap, 3.0
        segments = [(base, lead), (factor * cap, args.burst_seconds), (base, args.recovery_seconds)]
        results, _, started = phase(args, exe, url, traffic, sampler, segments)
        burst = [r for r in results if lead <= r.shot.at < lead + args.burst_seconds]
        sent = capacity.step_figures(burst, factor * cap, args.burst_seconds, args.slo_ms)
        figures = {"factor": factor, "offered_rps": factor * cap, "base_rps": base,
                   "achieved_send_rps": sent["achieved_send_rps"], "offered": sent["offered"],
                   **capacity.burst_figures(results, lead, args.burst_seconds, args.slo_ms),
                   "outcomes": capacity.outcomes(burst, args.burst_seconds),
                   # What the instances' own metrics said meanwhile: what an autoscaler would see.
                   "server_during": sampler.between(started + lead, started + lead + args.burst_seconds),
                   "probes_during": prober.between(started + lead, started + lead + args.burst_seconds)}
        # The host's steal in each second (the windows are dated from the burst's end): whether a
        # slow second after it was the hypervisor's.
        for w in figures["windows"]:
            at = started + lead + args.burst_seconds + w["t"]
            w["host_steal_ms"] = host.steal_ms(at, at + 1.0)
        figures["targets"] = burst_targets(figures, cap, args.slo_ms)
        out.append(figures)
        print(burst_line(figures, args), flush=True)
    return out


def burst_targets(b, cap, slo_ms):
    """Each of issue 23's targets for this burst: (the figure, the bound, met)."""
    o, probes = b["outcomes"], b["probes_during"] or {}
    admitted_bound = slo_ms * (2 if b["factor"] >= 10 else 1)
    admitted = o["admitted_p99_ms"]
    checks = {"client timeouts": (o["timed_out"], 0, o["timed_out"] == 0),
              "served/s": (o["served_rps"], round(SERVED_SHARE * cap, 1),
                           o["served_rps"] >= SERVED_SHARE * cap),
              "admitted p99 ms": (admitted, admitted_bound,
                                  admitted is not None and admitted <= admitted_bound),
              "shed p99 ms": (o["shed_p99_ms"], SHED_P99_MS,
                              o["shed_p99_ms"] is None or o["shed_p99_ms"] <= SHED_P99_MS),
              "recovery s": (b["recovered_after_s"], RECOVERY_S,
                             b["recovered_after_s"] is not None and b["recovered_after_s"] <= RECOVERY_S)}
    if probes:
        p99 = probes["probe_p99_ms"]
        checks["probe p99 ms"] = (p99, PROBE_P99_MS,
                                  p99 is not None and p99 <= PROBE_P99_MS and probes["probes_failed"] == 0)
    return {name: {"figure": f, "bound": bound, "met": met} for name, (f, bound, met) in checks.items()}


def burst_line(b, args):
    """What a burst did, in a few lines."""
    recovered = (f"{b['recovered_after_s']:g} s after it" if b["recovered_after_s"] is not None
                 else f"not within {args.recovery_seconds:g} s")
    line = (f"burst {b['factor']:g} x capacity = {b['offered_rps']:g} req/s for {args.burst_seconds:g} s "
            f"(sent {b['achieved_send_rps']} req/s{'' if b['offered'] else ', NOT OFFERED'}): success "
            f"{100 * (b['success_during'] or 0):.2f} %, errors {b['errors_during']}, p99 back under "
            f"{args.slo_ms:g} ms {recovered}")
    o = b["outcomes"]
    line += (f"\n  its requests: offered {o['offered']} ({o['offered_rps']:g}/s), served {o['served']} "
             f"({o['served_rps']:g}/s), shed {o['shed']}, timed out {o['timed_out']}, refused "
             f"{o['refused']}, unmatched feedback {o['unmatched_feedback']}, feedback not sent "
             f"{o['dropped_feedback']}; admitted p99 {_ms(o['admitted_p99_ms'])}, shed p99 "
             f"{_ms(o['shed_p99_ms'])}; the generator's fire lag p99 {_ms(o.get('fire_lag_p99_ms'))}")
    line += "\n  per endpoint: " + "; ".join(
        f"{kind} shed {k['shed']} of {k['offered']} ({100 * k['shed'] / max(1, k['offered']):.0f} %), served "
        f"{k['served_rps']:g}/s, admitted p99 {_ms(k['admitted_p99_ms'])}, shed p99 {_ms(k['shed_p99_ms'])}"
        for kind, k in o.get("by_kind", {}).items())
    seen = b["server_during"]
    if seen:
        line += (f"\n  the instances meanwhile: {seen['server_rps']:g} req/s completed, in-flight "
                 f"{seen['inflight_mean']:g}, Little {seen['little_concurrency']:g}, scrape max "
                 f"{seen['scrape_max_ms']:g} ms, {seen['scrapes_failed']}/{seen['scrapes']} scrapes failed")
        if seen.get("shed_waits"):
            line += ("\n  the server's shed waits (its histogram, from the scrape before the burst to "
                     "the one after): ") + "; ".join(
                f"{endpoint} {w['shed']}, {_share(w['over_10ms_share'])} over 10 ms, p99 within "
                f"{_ms(w['p99_within_ms']) if w['p99_within_ms'] is not None else 'over 1 s'}"
                for endpoint, w in sorted(seen["shed_waits"].items()))
    slow = [w for w in b.get("windows", ()) if w["t"] >= 0 and w["p99_ms"] > args.slo_ms]
    if slow:
        line += "\n  slow seconds after it (p99, the host's steal on the server CPUs): " + ", ".join(
            f"+{w['t']:g} s {w['p99_ms']:.0f} ms steal {_steal(w.get('host_steal_ms'))}" for w in slow[:10])
    probes = b.get("probes_during")
    if probes:
        line += (f"\n  probes (/healthz, /readyz): {probes['probes']}, failed {probes['probes_failed']}, "
                 f"p99 {_ms(probes['probe_p99_ms'])}, max {_ms(probes['probe_max_ms'])}")
    if b.get("targets"):
        line += "\n  targets: " + ", ".join(
            f"{name} {t['figure']} (bound {t['bound']}) {'met' if t['met'] else 'MISSED'}"
            for name, t in b["targets"].items())
    return line


def _steal(value):
    """A steal figure for a report line: '12 ms', or '?' when the samples did not cover it."""
    return "?" if value is None else f"{value:g} ms"


def _share(value):
    """A share for a report line: '2.2 %', or '-' when unknown."""
    return "-" if value is None else f"{100 * value:.1f} %"


def _ms(value):
    """A latency for a report line: '12.3 ms', or '-' when there was none."""
    return "-" if value is None else f"{value:.1f} ms"


def run(args, stack):
    """Everything after the arguments: target, pinning, ramp, bursts, report."""
    exe = openloop.build()
    records = load(args.data)
    pinned, target, per_instance = None, "url", None
    several = len(os.sched_getaffinity(0)) > 1
    if several:
        pinned = {"server": "as started" if args.url else sorted(cpus(args.server_cpus)),
                  "generator": sorted(cpus(args.generator_cpus))}
    if not args.url:
        target, per_instance = args.target, workers(args)
        work = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="calories-stress-")))
        if several:
            os.sched_setaffinity(0, cpus(args.server_cpus))  # inherited by everything started now
        args.url, started = start_service(args, stack, work, per_instance)
        args.metrics_url = args.metrics_url or started
        args.probe_url = args.probe_url or started
    if several:
        os.sched_setaffinity(0, cpus(args.generator_cpus))
    machine = _machine()
    print(f"machine: {machine}; load average {os.getloadavg()[0]:.2f}; pinned {pinned or 'no'}"
          + ("" if per_instance is None else f"; workers per instance {per_instance}"), flush=True)
    traffic = Traffic(records, args.feedback_fraction, args.feedback_delay, poisson=args.poisson)
    server_cpus = cpus(args.server_cpus) if pinned and pinned["server"] != "as started" \
        else range(os.cpu_count() or 1)
    with Sampler(args.metrics_url, interval=args.sample_seconds) as sampler, \
            Prober(args.probe_url or args.metrics_url, interval=PROBE_SECONDS) as prober, \
            Host(server_cpus) as host:
        if args.warmup_seconds > 0:
            warmup = [(min(50.0, ramp_rates(args)[0]), args.warmup_seconds)]
            phase(args, exe, args.url, traffic, sampler, warmup)
        steps = ramp(args, exe, args.url, traffic, sampler, host)
        verdict = capacity.knee(steps)
        print(f"knee: {verdict['knee_rps']} req/s, capacity: {verdict['capacity_rps']} req/s at p99 <= "
              f"{args.slo_ms:g} ms" + (f" ({verdict['refused']})" if verdict["refused"] else ""), flush=True)
        cap = args.burst_capacity or verdict["capacity_rps"]
        burst_list = bursts(args, exe, args.url, traffic, sampler, prober, host, cap) \
            if cap and args.bursts.strip() else []
    return {"url": args.url, "target": target, "workers_per_instance": per_instance,
            "machine": machine, "load_average_end": os.getloadavg(), "pinned": pinned,
            "slo_ms": args.slo_ms, "arrivals": "poisson" if args.poisson else "uniform",
            "mix": {"feedback_fraction": args.feedback_fraction, "feedback_delay_s": args.feedback_delay},
            "timeout_s": args.timeout, "max_outstanding": args.max_outstanding,
            "ramp": steps, "verdict": verdict, "bursts": burst_list}


def main(argv=None):
    """Run the stress test; 0 when it ran (figures are reported, not judged), 1 when it could not."""
    args = parse(argv)
    with contextlib.ExitStack() as stack:
        try:
            report = run(args, stack)
        except (openloop.EngineError, DataError, PostgresError, NginxError, RuntimeError) as exc:
            print(f"stress: {exc}", file=sys.stderr)
            return 1
    report["title"] = f"{report['url']} ({report['target']}), {report['machine'].split(',')[0]}"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {args.json}")
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    if capacity.plot(report, args.plot):
        print(f"plot: {args.plot}")
    else:
        print("plot skipped: matplotlib is not installed (pip install -r requirements-plot.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
