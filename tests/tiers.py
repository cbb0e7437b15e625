"""The whole suite in tiers (what `make test` runs through tox): unit, system and deploy side by side,
then the load-sensitive tier alone, each tier's wall time printed.

    python tests/tiers.py                 every tier
    python tests/tiers.py unit system     only these (in this order of phases)
    python tests/tiers.py ARGS...         anything else: pytest ARGS (tox -e py3 -- tests/x.py -k y)

The load tier (stress at a known capacity, the bench ratios, the fault tests' timeouts, overload)
measures time on an idle machine: nothing else of the suite shares the CPU with it. Each tier is
its own pytest process and log (reports/tiers/<tier>.log); a failed tier's failures are printed.
The last line sums the tiers as `N passed, N failed`.
"""

import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Phases run one after another; the tiers of one phase run side by side.
PHASES = (("unit", "system", "deploy"), ("load",))
COUNTS = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)")


def run_phase(tiers, logs):
    """Start the phase's tiers together; {tier: (exit code, seconds)} once all have ended."""
    started, procs = time.monotonic(), {}
    for tier in tiers:
        log = open(logs / f"{tier}.log", "w")  # noqa: SIM115 (closed below, after the process)
        # No bytecode anywhere: the tiers share the checkout, and each checks that the handout stays
        # as it was; a cache written by one tier's process would fail the others' checks.
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        procs[tier] = (subprocess.Popen([sys.executable, "-m", "pytest", f"tests/{tier}"], cwd=ROOT,
                                        env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"tier {tier}: started (log: {logs / f'{tier}.log'})", flush=True)
    done = {}
    while len(done) < len(procs):
        for tier, (proc, log) in procs.items():
            if tier not in done and proc.poll() is not None:
                log.close()
                done[tier] = (proc.returncode, time.monotonic() - started)
                report(tier, logs / f"{tier}.log", *done[tier])
        time.sleep(0.5)
    return done


def summary(text):
    """pytest's closing counts of one log: {passed: n, failed: n, ...}."""
    closing = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
    counts = {}
    for n, what in COUNTS.findall(closing[-1] if closing else ""):
        counts[what.rstrip("s") if what.startswith("error") else what] = int(n)
    return counts


def report(tier, log, code, seconds):
    """One line per tier; a failed tier's failures and short summary in full."""
    text = log.read_text(errors="replace")
    counts = summary(text)
    shown = ", ".join(f"{n} {what}" for what, n in counts.items()) or "no tests ran"
    print(f"tier {tier}: {shown} in {seconds:.0f} s (exit {code})", flush=True)
    if code not in (0, 5):
        start = text.find("= FAILURES =")
        start = text.rfind("\n", 0, start) if start >= 0 else text.find("short test summary")
        print(text[max(start, 0):] if start >= 0 else text[-20000:], flush=True)


def main(argv=None):
    """Run the tiers; 0 when every tier passed."""
    argv = list(argv if argv is not None else sys.argv[1:])
    every = [t for phase in PHASES for t in phase]
    if any(a not in every for a in argv):
        return subprocess.call([sys.executable, "-m", "pytest", *argv], cwd=ROOT)
    wanted = argv or every
    logs = ROOT / "reports" / "tiers"
    logs.mkdir(parents=True, exist_ok=True)
    started, results = time.monotonic(), {}
    for phase in PHASES:
        tiers = [t for t in phase if t in wanted]
        if tiers:
            results.update(run_phase(tiers, logs))
    totals = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for tier in results:
        for what, n in summary((logs / f"{tier}.log").read_text(errors="replace")).items():
            totals[what] = totals.get(what, 0) + n
    print(f"tiers: {', '.join(f'{t} {s:.0f} s' for t, (_, s) in results.items())}; "
          f"wall {time.monotonic() - started:.0f} s")
    failed = totals["failed"] + totals["error"]
    print(f"{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return 0 if all(code == 0 for code, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
