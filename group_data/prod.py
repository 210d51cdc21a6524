"""Overrides for the production hosts (inventories/prod.py). Everything else: group_data/all.py."""

# The model loads for minutes on a cold GPU VM: give the health gate room.
health_deadline_s = 600
