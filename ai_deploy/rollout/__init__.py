"""A rollout over a fleet: the plan (hosts by batches, each host's current → new release), every
host's lock held from before the first change to the end, a canary then batches each driven by
one pyinfra run, health watched from outside, and a switch back of every host the rollout
switched when anything fails.
The same package holds what the rollout runs with: pyinfra runs streamed (pyinfra_run), the
outside health check (health) and the exit table (exitcodes)."""
