"""The deploy benchmark: the same scenarios, under the same steady load on /predict, against our
deploy (each strategy) and against a faithful script of the seed's procedure, on sandbox hosts.

Run `python -m bench.run --help`; the modules:
- guard: the only addresses the benchmark may send traffic to (loopback, sandbox guests)
- load: the steady load generator and what it records per request
- metrics: percentiles, failure windows, per-run summaries and ours/seed ratios
- seed: the seed's deploy script, its systemd unit and host set-up, its health poll
- ours: our deploy (pyinfra) per strategy
- variants: the release artifacts the scenarios deploy
- scenarios: the scenarios and how one is measured
- report: RESULTS.md, the charts and the raw JSON
"""
