"""Run on the host with its own python3 (standard library only; ai_deploy.host.page_cache sends
it): how much of a release's model files is in the page cache, and, in mode "warm", the rest
read into it when it fits in the memory the kernel says is available.

    python3 page_cache_tool.py '{"mode": "check"|"warm", "margin": BYTES, "max_s": SECONDS}' DIR

Every regular file under DIR counts once (links followed, the same file through two links
once). Residency is mincore(2) over a read-only mapping, so looking costs no read (it must run
as root: the kernel tells a process that neither owns nor may write a file that all of it is
resident, and the service's system-call filter refuses mincore). "warm" reads
only the files that are not wholly resident, in order, after posix_fadvise(WILLNEED), and stops
after MAX_S seconds. It fits when the bytes not resident are at most MemAvailable less MARGIN.

Output, one line each (sizes in bytes):
    FILES <count> <bytes> <resident bytes>
    AVAILABLE <MemAvailable bytes>                      (mode warm)
    SKIP <bytes to read>                                (warm: does not fit; nothing read)
    READ <files read> <bytes read> <seconds> <stopped: 0|1>
    RESIDENT <resident bytes after>
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import time

CHUNK = 8 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_FAILED = ctypes.c_void_p(-1).value


def model_files(root: str) -> list[tuple[str, int]]:
    """(path, size) of every regular file under ROOT, links followed, each file once."""
    seen: set[tuple[int, int]] = set()
    found: list[tuple[str, int]] = []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if not os.path.isfile(path) or key in seen:
                continue
            seen.add(key)
            found.append((path, st.st_size))
    return found


def resident_bytes(path: str, size: int) -> int:
    """Bytes of PATH in the page cache (whole pages, the last one counted to SIZE)."""
    if size == 0:
        return 0
    page = mmap.PAGESIZE
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _FAILED):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            flags = bytes(vec)
        finally:
            _libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)
    return min((pages - flags.count(0)) * page, size)  # only bit 0 is set: resident


def available_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def read_into_cache(path: str, buffer: bytearray) -> int:
    fd = os.open(path, os.O_RDONLY)
    done = 0
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        view = memoryview(buffer)
        while True:
            n = os.readv(fd, [view])
            if n <= 0:
                return done
            done += n
    finally:
        os.close(fd)


def main(args: dict[str, object], root: str) -> int:
    files = model_files(root)
    resident = {path: resident_bytes(path, size) for path, size in files}
    total = sum(size for _, size in files)
    print("FILES", len(files), total, sum(resident.values()))
    if args.get("mode") != "warm":
        return 0
    missing = [(path, size) for path, size in files if resident[path] < size]
    to_read = sum(size - resident[path] for path, size in missing)
    available = available_bytes()
    print("AVAILABLE", available)
    if to_read > available - int(str(args["margin"])):
        print("SKIP", to_read)
        return 0
    started = time.monotonic()
    limit = float(str(args["max_s"]))
    buffer = bytearray(CHUNK)
    count = read = stopped = 0
    for path, _ in missing:
        if time.monotonic() - started > limit:
            stopped = 1
            break
        read += read_into_cache(path, buffer)
        count += 1
    print("READ", count, read, f"{time.monotonic() - started:.3f}", stopped)
    print("RESIDENT", sum(resident_bytes(path, size) for path, size in files))
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1]), sys.argv[2]))
