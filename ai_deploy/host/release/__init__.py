"""The steps of putting a release in service on one host: lock, prepare, health, journal, prune,
each in its own module, all of them through a `Remote`. The gate that runs them in order and
hands the release to a strategy is ai_deploy.host.gate, one level up: strategies call these
steps, and nothing here calls a strategy."""
