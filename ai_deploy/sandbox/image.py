"""The cached base image every sandbox host boots from: a debootstrap'd Debian that looks like a
fresh cloud VM (a sudo-capable `ubuntu` user reachable over SSH with the sandbox key).

The image is built once into `<name>.partial` under an exclusive lock and renamed into place
only when complete, so a killed build is never trusted: the next build finds the partial
directory, unmounts whatever the killed build left mounted in it, removes it and starts over.
The finished image is never modified again (hosts mount it read-only as an overlay's lower dir).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ai_deploy.sandbox.locking import file_lock
from ai_deploy.sandbox.paths import cache_dir, ssh_key_path

SUITE = "bookworm"
PACKAGES = (
    "openssh-server",
    "sudo",
    "python3",
    "curl",
    "ca-certificates",
    "dbus",
    "systemd-sysv",
    "iproute2",
    "libpam-systemd",
    "logrotate",
    "netbase",
    "procps",
)
# Bump when the recipe below changes: a new name makes every machine build the new image.
RECIPE = "r3"
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "console-getty.service",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
)
CA_SOURCE_DIR = Path("/usr/local/share/ca-certificates")
REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "nft": "nftables",
    "ip": "iproute2",
    "ssh-keygen": "openssh-client",
}


class SandboxError(Exception):
    """A sandbox operation failed; the message says what and what to do."""


def check_requirements() -> None:
    """Fail with the command to run when not root or a required tool is missing."""
    if os.geteuid() != 0:
        raise SandboxError(
            "sandbox hosts need root (network namespaces, overlay mounts, systemd-nspawn): "
            "run as root, e.g. `sudo ai-deploy sandbox up`"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if not shutil.which(tool)})
    if missing:
        raise SandboxError(
            "missing tools for sandbox hosts; install them with: "
            f"apt-get install -y {' '.join(missing)} (or run ./scripts/setup)"
        )


def image_dir() -> Path:
    return cache_dir() / "images" / f"debian-{SUITE}-{RECIPE}"


def _partial_dir() -> Path:
    image = image_dir()
    return image.with_name(image.name + ".partial")


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (AI_DEPLOY_DEBIAN_MIRROR overrides it)."""
    override = os.environ.get("AI_DEPLOY_DEBIAN_MIRROR")
    if override:
        return override
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        text = Path(path).read_text()
        for stanza in re.split(r"\n\s*\n", text):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return next(p for p in parts[1:] if not p.startswith("["))
    raise SandboxError(
        f"no Debian {SUITE} mirror found in /etc/apt/sources.list(.d); "
        "set AI_DEPLOY_DEBIAN_MIRROR to one"
    )


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below PATH, deepest first."""
    root = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == root or point.startswith(root + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount anything mounted below PATH, then delete it."""
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise SandboxError(f"could not remove {path}; remove it by hand and retry")


def ensure_ssh_key() -> Path:
    """Create the sandbox key pair once (ed25519, no passphrase, 0600)."""
    key = ssh_key_path()
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = key.with_name(key.name + ".tmp")
    for p in (tmp, tmp.with_suffix(".tmp.pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ai-deploy-sandbox", "-f", str(tmp)],
        check=True,
    )
    os.replace(tmp.with_name(tmp.name + ".pub"), key.with_suffix(".pub"))
    os.replace(tmp, key)
    return key


def ensure_image() -> Path:
    """Return the finished base image, building it first when absent (about a minute)."""
    check_requirements()
    image = image_dir()
    ensure_ssh_key()
    if image.is_dir():
        return image
    with file_lock(image.parent / ".build.lock", "base image build") as lock_fd:
        if image.is_dir():
            return image
        partial = _partial_dir()
        if partial.exists():
            print(f"found a half-built base image at {partial}; removing it", file=sys.stderr)
            remove_tree(partial)
        _build(partial, lock_fd)
        os.rename(partial, image)
        print(f"base image ready: {image}", file=sys.stderr)
        _remove_old_images(image)
    return image


def _overlay_lowerdirs() -> set[str]:
    found = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            for option in line.split()[-1].split(","):
                if option.startswith("lowerdir="):
                    found.update(option[len("lowerdir=") :].split(":"))
    return found


def _remove_old_images(keep: Path) -> None:
    """Images of older recipes that no running host uses are removed (they are large)."""
    in_use = _overlay_lowerdirs()
    for old in keep.parent.glob(f"debian-{SUITE}-*"):
        partial = old.name.endswith(".partial")
        if old != keep and old.is_dir() and not partial and str(old) not in in_use:
            print(f"removing the old base image {old}", file=sys.stderr)
            remove_tree(old)


def _run_logged(cmd: list[str], log: Path, lock_fd: int, what: str) -> None:
    """Run CMD with output to LOG, printing progress while it runs.

    The child inherits the build lock so that, if this process is killed, no new build starts
    while the orphaned child still writes into the partial directory.
    """
    started = time.monotonic()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(lock_fd,)
        )
        next_note = 15.0
        while proc.poll() is None:
            time.sleep(0.5)
            elapsed = time.monotonic() - started
            if elapsed >= next_note:
                print(f"  {what}: still running ({elapsed:.0f} s)", file=sys.stderr, flush=True)
                next_note += 15.0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SandboxError(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")


def _build(target: Path, lock_fd: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    log = target.parent / "build.log"
    log.write_text("")
    mirror = debian_mirror()
    print(
        f"building the sandbox base image (Debian {SUITE}, once per machine, about a minute)",
        file=sys.stderr,
        flush=True,
    )
    _run_logged(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(target),
            mirror,
        ],
        log,
        lock_fd,
        "debootstrap",
    )
    _customize(target, log, lock_fd)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _customize(root: Path, log: Path, lock_fd: int) -> None:
    """Make the rootfs look like a fresh cloud VM."""
    pub = ssh_key_path().with_suffix(".pub").read_text()
    for crt in sorted(CA_SOURCE_DIR.glob("*.crt")):
        shutil.copy2(crt, root / "usr/local/share/ca-certificates" / crt.name)
    script = "\n".join(
        [
            "set -e",
            "useradd -m -s /bin/bash -G sudo ubuntu",
            "install -d -m 0700 -o ubuntu -g ubuntu /home/ubuntu/.ssh",
            "update-ca-certificates >/dev/null",
            "rm -f /var/lib/dbus/machine-id",
            ": > /etc/machine-id",
        ]
    )
    _run_logged(["chroot", str(root), "/bin/sh", "-c", script], log, lock_fd, "image setup")
    keys = root / "home/ubuntu/.ssh/authorized_keys"
    _write(keys, pub, 0o600)
    uid_gid = (root / "home/ubuntu").stat()
    os.chown(keys, uid_gid.st_uid, uid_gid.st_gid)
    # SSL_CERT_FILE (see below) survives sudo, so `sudo uv ...` trusts the same CA store.
    _write(
        root / "etc/sudoers.d/90-ubuntu",
        'Defaults env_keep += "SSL_CERT_FILE"\nubuntu ALL=(ALL) NOPASSWD:ALL\n',
        0o440,
    )
    _write(
        root / "etc/ssh/sshd_config.d/10-sandbox.conf",
        "PasswordAuthentication no\nUseDNS no\n",
    )
    # uv ships its own CA roots; this test environment intercepts TLS with a CA that only the
    # system store knows, so point TLS clients that honour it at the system bundle.
    env = root / "etc/environment"
    env.write_text(env.read_text() if env.exists() else "")
    with env.open("a") as f:
        f.write("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\n")
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # No /run/nologin at boot: systemd-user-sessions removes it, and when that oneshot fails
    # on a loaded machine (seen with several hosts booting at once) no one could log in to
    # start it again; without the file the boot is merely degraded and the unit is retried.
    nologin = root / "etc/tmpfiles.d/systemd-nologin.conf"
    nologin.parent.mkdir(parents=True, exist_ok=True)
    nologin.unlink(missing_ok=True)
    nologin.symlink_to("/dev/null")
    _write(root / "etc/hostname", "sandbox\n")
    (root / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
