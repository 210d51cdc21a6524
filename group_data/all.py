"""Every tunable of the deploy with its default. Override per group in group_data/<group>.py
or per run with `pyinfra ... --data name=value`."""

# Every operation runs as root through sudo (the inventory's user only needs sudo rights).
_sudo = True

# The application and where it lives
# The names below left at None are derived from app_name (ai_deploy.settings.derive); a value
# set anywhere (a group_data file, ai-deploy.toml, --data) wins.
app_name = "ai-server"  # the systemd unit is <app_name>.service
app_root = None  # None: /app/<app_name>
# The service runs as a system user of its own: no sudo, no login shell, no SSH key, and it
# cannot write its code. The seed ran it as `ubuntu` (the SSH user, which can sudo): still
# possible by setting app_user = "ubuntu", with a warning on every run.
app_user = None  # None: <app_name>
app_group = None  # None: <app_name>
code_owner = "root"  # owns releases and venvs: the service cannot rewrite its own code
# Runs `uv sync` (building a package runs its code): never root. None: <app_name>-build, one per
# app, so that one app's build code cannot touch another app's venvs or uv cache on a shared VM.
build_user = None
app_data_dirs = []  # under app_root, kept across releases, owned by app_user (e.g. ["chroma_db"])
app_module = "main:app"  # uvicorn's APP; imported from the release's root, then src/
app_host = "0.0.0.0"
app_port = 8000
app_log_dir = None  # None: /var/log/<app_name>
app_log_rotate_days = 14
# The service's persistent cache directory and HOME (None: <app_root>/cache; or a directory of
# its own, such as /var/cache/<app_name>): 0700, owned by app_user, writable by the hardened
# units, kept across releases and restarts, with XDG_CACHE_HOME, HF_HOME, TORCH_HOME,
# TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR and VLLM_CACHE_ROOT inside; `ai-deploy cache clear`
# empties it.
app_cache_dir = None
# Variables added to those of the cache directory, or replacing them, for the service and `exec`:
# {"HF_HUB_OFFLINE": "1", "HF_HOME": "{cache_dir}/hf"} ({cache_dir}: the directory's path). The
# app's .env wins over both.
app_cache_env = {}

# The .env file: <app_root>/.env, 0600, owned by app_user, never in an artifact.
# A local file to upload; content is never printed. Relative: to ai-deploy.toml's directory when
# set there, to the working directory when given on the command line (--data env_file=PATH).
env_file = None
env_default = None  # text written when the host has no .env and env_file is not given
env_allow_empty = False  # when neither is available: create an empty .env instead of stopping

# uv and Python
uv_version = "0.13.9"  # pinned; the deploy uploads exactly this uv to uv_path
uv_path = "/usr/local/bin/uv"
uv_python = "python3"  # interpreter for the venv: a path, a command, or a version for uv
uv_python_downloads = "never"  # "automatic" lets uv download uv_python when it is a version
uv_env = {}  # extra environment for `uv sync` (an index URL, a CA bundle, ...)

# The unit
unit_restart_sec = 5
# The longest an open connection or stream is waited for when the service stops (a restart,
# a release switch): uvicorn's --timeout-graceful-shutdown; systemd's TimeoutStopSec is 15 s
# more. A stream still open after it is cut. A stop waits as long as the longest open stream.
drain_timeout_s = 300
# socket / restart (one copy): before the old process stops, the deploy counts the connections
# it holds. "wait": they finish (at most drain_timeout_s; the deploy says how many were still
# cut then); "cut": it is killed at once, a shorter outage, and the deploy says how many it cut.
drain_mode = "wait"
# The hardened units (DevicePolicy=closed) open only these devices besides /dev/null and the
# like: DeviceAllow= entries, a path or "char-<name in /proc/devices>" (globs allowed).
# "char-nvidia*" is every NVIDIA node (nvidia-frontend: /dev/nvidia0..N and /dev/nvidiactl;
# nvidia-uvm: /dev/nvidia-uvm*; nvidia-caps), resolved when the unit starts, so it holds for
# any GPU count and allows nothing on a host without the driver.
unit_gpu_devices = ["char-nvidia*"]

# How a release goes into service (see README): "socket" (systemd socket owns the port; a
# restart makes connections wait instead of failing), "restart" (the service binds the port),
# or "bluegreen" (two instances behind nginx; traffic moves only to a healthy one; the GPU
# holds two copies of the model while both run).
deploy_strategy = "socket"
socket_backlog = 4096
bluegreen_ports = (8001, 8002)  # blue, green (internal, 127.0.0.1 only)
bluegreen_upstream = None  # None: /etc/nginx/<app_name>-upstream.conf
bluegreen_drain_s = 5  # nginx's old workers settle; then the old colour's open connections
#                         are waited for (at most drain_timeout_s) and it stops
# Blue/green on a GPU host: before the idle colour starts, nvidia-smi's free memory is compared
# with what the release needs on each GPU (free memory plus what the idle colour holds, no
# margin added). None: what the live colour's processes hold now (MainPID and its cgroup);
# a number of MiB sets it (put any headroom you want in it). Hosts without nvidia-smi, or
# where it fails, are not checked.
gpu_memory_needed_mib = None
# When two copies do not fit: "restart" stops the live colour before the idle one starts (no
# overlap; requests fail while the new release loads), "refuse" stops the deploy on that host
# before anything changes (the live colour keeps serving).
gpu_memory_when_short = "restart"

# A fleet behind a load balancer (README: "Behind a load balancer"). lb_drain: before a host's
# service stops or switches, the host answers lb_health_path with 503 (drained), the deploy
# waits lb_drain_wait_s for the load balancer to see it, then for the requests in flight (at
# most drain_timeout_s); once the release passes the gate it answers 200 again and the deploy
# waits lb_drain_wait_s more. nginx answers lb_health_path on every strategy: with socket and
# restart it takes app_port and the app listens on 127.0.0.1:lb_upstream_port. Keep-alive of
# nginx and uvicorn is then 620 s, above a GCP backend service's 600 s.
lb_drain = False
lb_health_path = "/lb-health"  # 200: in service and health_path answers 200; 503: drained or not
lb_health_port = None  # None: app_port (another port: nginx answers only lb_health_path there)
lb_drain_wait_s = 12  # the load balancer's check interval x threshold, plus a margin
lb_upstream_port = None  # socket / restart with lb_drain: the app's port (None: app_port + 10000)

# Releases, health gate, lock
releases_keep = 5  # newest releases kept; current and previous are never removed
health_path = "/health"
health_deadline_s = 300  # generous: a release may spend minutes loading its model
# A start whose health path reports progress ({"loading": {"done": D, "total": T}} in its JSON,
# optional) gets health_deadline_s more after each step forward, up to this from its start; one
# that stops moving fails health_deadline_s after its last step, with that step in the reason.
health_deadline_max_s = 1800
# The ready probe: after health_path answers 200, one request from the host itself that must
# answer ready_status before the release is live ("healthy" servers may still be warming up).
# None: health_path alone. E.g. ready_path = "/v1/completions", ready_method = "POST",
# ready_body = '{"model": "my-model", "prompt": "hi", "max_tokens": 1}' (sent as JSON).
ready_path = None
ready_method = "GET"
ready_body = None
ready_status = 200
health_interval_s = 1.0
health_fail_after_errors = 3  # consecutive 5xx answers that end the wait at once
lock_wait_s = 0  # 0: a deploy that finds the host locked fails at once with the holder
lock_lease_s = 180  # the holder renews its lease while it works; one not renewed for this long
#                     was left by a deploy that died, and any machine may take it over

# What an artifact may be (checked on the deployer before upload, and again while extracting)
artifact_max_bytes = 4 * 1024**3  # its files, expanded
artifact_max_members = 50_000
artifact_max_ratio = 100  # expanded size / compressed size (a zip bomb is far above)
# Free space needed on app_root's filesystem before extracting: the release, plus this much
# for its venv when its uv.lock is new (torch and CUDA wheels are several GiB)
venv_space_bytes = 8 * 1024**3

# Model files: an artifact's models.toml names them (url, sha256, size); the host fetches each
# once into app_root/models/blobs/<sha256> (resumed, verified before it is used, group-readable
# only) and the release sees models/<name>/ (see README)
models_allow_http = False  # http:// URLs too (a trusted network only): https:// and gs:// else
models_fetch_timeout_s = 6 * 3600  # all of a release's downloads
models_verify = False  # hash the release's model files again first (damaged ones: fetched again)
models_fetch_retries = 8  # failed attempts in a row on one file (backoff 1 s doubling, max 30 s)
models_space_reserve_bytes = 1024**3  # free space that must remain after the downloads
models_gcs_url = "https://storage.googleapis.com"  # gs://: the JSON API's media download
models_metadata_host = "metadata.google.internal"  # gs://: the VM's token (its service account)

# The NVIDIA driver (tasks/gpu.py): nothing happens on hosts without an NVIDIA GPU
gpu_driver = "auto"  # "skip": never look at the GPU
gpu_driver_method = "cuda-installer"  # or "ubuntu-drivers", "packages", "command"
gpu_driver_branch = "570"  # ubuntu-drivers / packages: nvidia-driver-<branch>-server
gpu_driver_command = None  # method "command": the shell command that installs the driver
gpu_installer_url = (
    "https://storage.googleapis.com/compute-gpu-installation-us/installer/latest/cuda_installer.pyz"
)
gpu_sysfs_pci = "/sys/bus/pci/devices"  # where PCI devices are read from
gpu_reboot_timeout_s = 600

# A rollout over several hosts (`ai-deploy deploy`; `pyinfra INVENTORY deploy.py` still changes
# every host at once): the canary goes first, then batches; a number of hosts or a percentage of
# the fleet (rounded up). Any failure switches back every host the rollout switched.
rollout_canary = "1"  # "0": no canary
rollout_batch_size = "25%"
rollout_wait_s = 0  # after each step but the last: seconds its hosts' health is watched
# The floor: hosts out of service at once, a number or a percentage of the fleet (rounded
# down, at least 1), counting hosts already unhealthy. A one-copy restart (socket, restart,
# blue/green when two copies do not fit the GPU) and a drain (lb_drain) take a host out during
# its step; blue/green does not. A plan with a larger step is refused before any change
# (exit 2); switch-backs go in steps within it.
rollout_max_unavailable = "1"

# What this run does (set with --data): artifact=PATH deploys it; rollback=RELEASE|previous;
# restart_current=true restarts the current release through the health gate (`ai-deploy restart`)
artifact = None
rollback = None
restart_current = False
# Set by `ai-deploy deploy` on a fleet: the rollout already holds every host's lock (with this
# token in its info) for all its batches; the run works under that lock and leaves it held.
rollout_lock_token = None
