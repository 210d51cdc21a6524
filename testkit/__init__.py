"""Shared by tests/ and bench/: a bounded load generator, release variants of the example app,
the address guard and SSH helpers for sandbox hosts."""
