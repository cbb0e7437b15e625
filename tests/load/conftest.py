"""The load tier: what measures time or needs the CPU to itself (stress at a known capacity, the bench
ratios, the fault tests' timeouts, overload and shedding, rollout and scale-out under load). It
runs alone, after the other tiers (tests/tiers.py): nothing shares the CPU with it."""
