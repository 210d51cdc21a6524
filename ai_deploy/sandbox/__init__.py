"""Throw-away local systemd hosts: systemd-nspawn containers that behave like a fresh cloud VM."""
