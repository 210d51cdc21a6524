"""Converge hosts to the AI server's target state (see README): run with
`pyinfra INVENTORY deploy.py [--data artifact=PATH | --data rollback=previous|RELEASE]`."""

from pyinfra import config, host, state

from ai_deploy.host.event_hooks import send_events
from ai_deploy.host.strategies.front import listen
from ai_deploy.settings.pyinfra_hooks import check_host, stop
from tasks.env import env_file_present
from tasks.gpu import gpu_driver_ready
from tasks.layout import app_layout_present, upload_staging_dir
from tasks.release import release_serving
from tasks.unit import unit_installed
from tasks.uv import uv_installed

# Unknown or ill-typed settings stop the run here, before this host's first operation.
check_host(host)
try:  # ...and so do settings that clash with each other: the lb front's ports
    listen(host.data)
except ValueError as exc:
    raise stop("deploy.py", [str(exc)]) from None
# What changed on each host, as data for `ai-deploy` (its default output).
send_events(state)
# Uploads are staged in a directory private to this deploy, made first by app_layout_present.
config.TEMP_DIR = upload_staging_dir(host.data.app_root)
app_layout_present()
uv_installed()
gpu_driver_ready()
env = env_file_present()
units_changed = unit_installed()
release_serving(restart=units_changed or bool(env and env.will_change))
