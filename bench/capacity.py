"""What a stress run's results mean: per-step figures, the knee and capacity, burst recovery, the plot."""

import collections
import math

SUCCESS_TARGET = 0.999
# A step counts as offered only when the generator fired at >= 95 % of the rate, opened every
# socket it wanted, and was never late by more than the SLO at p99 (its lag is part of every
# latency it reports, so a late generator over-reports latency: its verdict would mean nothing).
OFFERED_SHARE = 0.95


def quantile(values, q):
    """The q-quantile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_ms(results):
    """p50/p95/p99/max (ms) over every request, errors at the time they were given up."""
    if not results:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    values = [r.latency * 1000 for r in results]
    return {f"p{int(q * 100)}": round(quantile(values, q), 3) for q in (0.5, 0.95, 0.99)} | {
        "max": round(max(values), 3)}


def errors(results):
    """Failed requests by cause: timeout, connection, local (the generator's own), or HTTP status."""
    out = collections.Counter()
    for r in results:
        if not r.ok:
            out[r.error or str(r.status)] += 1
    return dict(out)


def sent(results):
    """The results of requests that left the client (a feedback whose prediction failed is not sent)."""
    return [r for r in results if r.sent]


def served(r):
    """A served request: a prediction answered 200, or a feedback matched to its prediction (200;
    202 means unmatched: stored, never joined, a label lost to quality)."""
    return r.error is None and r.status == 200


def outcomes(results, seconds):
    """What became of the requests due in a window of `seconds`: offered (sent), served, shed
    (503), timed out, refused, the admitted p99 and the shed answers' own p99 (ms, from the
    intended send time), overall and per kind of request, and how late the generator itself sent
    them (fire lag p99, ms): the part of every latency that is the generator's own.

    Admitted is every sent request not shed and not refused at connect: timeouts included, at
    the client's timeout, since a request that waited that long was taken in and not answered.
    """
    out = _outcome(results, seconds)
    out["by_kind"] = {kind: _outcome([r for r in results if r.shot.kind == kind], seconds)
                      for kind in sorted({r.shot.kind for r in results})}
    return out


def _outcome(results, seconds):
    """The figures of `outcomes` for one set of results."""
    out = sent(results)
    shed = [r.latency * 1000 for r in out if r.error is None and r.status == 503]
    admitted = [r.latency * 1000 for r in out
                if r.error in (None, "timeout") and r.status != 503]
    count = collections.Counter(r.error for r in out)
    return {"offered": len(out), "offered_rps": round(len(out) / seconds, 1),
            "served": sum(map(served, out)), "served_rps": round(sum(map(served, out)) / seconds, 1),
            "shed": len(shed), "timed_out": count["timeout"], "refused": count["connection"],
            "unmatched_feedback": sum(r.shot.kind == "feedback" and r.status == 202 for r in out),
            "dropped_feedback": len(results) - len(out),
            "admitted_p99_ms": round(quantile(admitted, 0.99), 3) if admitted else None,
            "shed_p99_ms": round(quantile(shed, 0.99), 3) if shed else None,
            "fire_lag_p99_ms": round(quantile([r.lag * 1000 for r in out], 0.99), 3) if out else None}


def step_figures(results, rate, seconds, slo_ms):
    """Offered and achieved rates, latency percentiles, success and errors of one constant-rate step."""
    # Dropped shots were handled on schedule too (the client chose not to send them): they count
    # for the generator's rate, never for the server's figures.
    fired = sorted(r.shot.at + r.lag for r in results)
    span = fired[-1] - fired[0] if len(fired) > 1 else 0.0
    achieved = (len(fired) - 1) / span if span > 0 else None
    lag_p99 = quantile([r.lag * 1000 for r in results], 0.99) if results else None
    dropped = len(results) - len(sent(results))
    results = sent(results)
    n = len(results)
    ok = sum(r.ok for r in results)
    # Answers per second until the last one came, so an overloaded step shows what the server
    # completes, not the rate it was offered.
    done = max((r.shot.at + r.latency for r in results if r.ok), default=0.0)
    throughput = ok / max(seconds, done - min(r.shot.at for r in results)) if results else 0.0
    offered = (achieved is not None and achieved >= OFFERED_SHARE * rate
               and lag_p99 <= slo_ms and "local" not in errors(results))
    latency = latency_ms(results)
    success = ok / n if n else None
    return {"offered_rps": rate, "seconds": seconds, "requests": n, "dropped_feedback": dropped,
            "achieved_send_rps": round(achieved, 1) if achieved else None,
            "generator_lag_p99_ms": round(lag_p99, 3) if lag_p99 is not None else None,
            "offered": offered, "throughput_rps": round(throughput, 1), "success": success,
            "latency_ms": latency, "errors": errors(results),
            "within_slo": bool(n and latency["p99"] <= slo_ms and success >= SUCCESS_TARGET)}


def knee(steps):
    """The capacity (highest offered rate within the SLO before the first step out of it) and the knee.

    A step the generator could not offer ends the search: nothing above it is claimed.
    """
    capacity, verdict = None, {"knee_rps": None, "capacity_rps": None, "refused": None}
    for step in steps:
        if not step["offered"]:
            verdict["refused"] = (f"the generator could not offer {step['offered_rps']:g} req/s "
                                  f"(sent {step['achieved_send_rps']} req/s, lag p99 "
                                  f"{step['generator_lag_p99_ms']} ms): no knee is claimed at or above it")
            break
        if not step["within_slo"]:
            verdict["knee_rps"] = step["offered_rps"]
            break
        capacity = step["offered_rps"]
    if verdict["knee_rps"] is not None:
        verdict["capacity_rps"] = capacity
        if capacity is None:
            verdict["refused"] = (f"the first step ({verdict['knee_rps']:g} req/s) already missed the SLO: "
                                  "start the ramp lower (--start-rps, --rates)")
    elif verdict["refused"] is None and steps:
        verdict["refused"] = (f"every step up to {steps[-1]['offered_rps']:g} req/s met the SLO: "
                              "the knee is above the ramp (raise --max-rps)")
    return verdict


def windows(results, width=1.0):
    """Results grouped by the window of their intended send time: {window index: [results]}."""
    out = collections.defaultdict(list)
    for r in results:
        out[int(r.shot.at // width)].append(r)
    return dict(sorted(out.items()))


def burst_figures(results, lead, seconds, slo_ms, width=1.0):
    """Errors during and after a burst that starts at `lead` s, and when p99 is back within the SLO."""
    results, end = sent(results), lead + seconds
    during = [r for r in results if lead <= r.shot.at < end]
    after = [r for r in results if r.shot.at >= end]
    series = []
    for index, group in windows(results, width).items():
        lat = latency_ms(group)
        series.append({"t": round(index * width - end, 3), "requests": len(group),
                       "p99_ms": lat["p99"], "success": sum(r.ok for r in group) / len(group)})
    recovered = None
    for i, w in enumerate(series):
        if w["t"] >= 0 and all(x["p99_ms"] <= slo_ms and x["success"] >= SUCCESS_TARGET for x in series[i:]):
            recovered = w["t"]
            break
    return {"requests_during": len(during), "errors_during": errors(during),
            "success_during": sum(r.ok for r in during) / len(during) if during else None,
            "errors_after": errors(after), "latency_during_ms": latency_ms(during),
            "recovered_after_s": recovered, "windows": series}


def plot(report, path):
    """Latency percentiles and success against offered load, knee and capacity marked; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = report["ramp"]
    x = [s["offered_rps"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=90)
    for q, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
        ax.plot(x, [s["latency_ms"][q] for s in steps], style, marker=".", label=f"{q} latency")
    ax.axhline(report["slo_ms"], color="grey", lw=0.8)
    ax.text(x[0], report["slo_ms"] * 1.1, f"SLO {report['slo_ms']:g} ms", color="grey", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("offered load (req/s, open loop)")
    ax.set_ylabel("latency from intended send (ms)")
    right = ax.twinx()
    right.plot(x, [100 * s["success"] for s in steps], color="black", lw=0.8, marker="x", label="success %")
    right.set_ylabel("success %")
    right.set_ylim(0, 105)
    verdict = report["verdict"]
    # The capacity's label left of its line, the knee's right of it: one step apart, they overlapped.
    for key, colour, side in (("capacity_rps", "green", "right"), ("knee_rps", "red", "left")):
        if verdict[key] is not None:
            ax.axvline(verdict[key], color=colour, lw=1)
            ax.text(verdict[key], ax.get_ylim()[1], f" {key.split('_')[0]} {verdict[key]:g} ",
                    color=colour, fontsize=8, va="top", ha=side)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_title(report.get("title", "capacity"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True
