"""Side-by-side benchmarks of sqlcache against the caches people would otherwise use.

Run `python -m benchmarks` (`--quick` for a run under two minutes, `--smoke` for a few seconds).
Every workload runs on sqlcache and on each installed peer in one process, on the same values,
and the run writes `benchmarks/results/latest.md`, `latest.json` and `latest.png`.
"""
