"""Putting a release in service on one host: lock, prepare, go live (by strategy), journal,
prune; each step in its own module, all of them through a `Remote`."""
