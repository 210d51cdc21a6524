"""Hosts made by `ai-deploy sandbox up` (their inventory file is named sandbox.py)."""

# A harmless .env so that the sandbox deploys out of the box.
env_default = "# sandbox host: no secrets here\nMODEL_LOAD_SECONDS=2\n"
health_deadline_s = 120
