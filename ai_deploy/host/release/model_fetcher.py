"""Fetches model files into the host's blob store (model_store.py, shipped beside it), or verifies
the ones there; run on the host by root with its python3 (3.8+, standard library only):
`python3 FILE JOB.json`.
JOB: store, blobs, partial (absolute paths), group, files [{sha256, size, url, path}], DEFAULTS.
gs://BUCKET/OBJECT is read through the Cloud Storage JSON API with JOB's token, or else with the
metadata server's (asked again once when storage answers 401). Timeouts, cut connections, 5xx and
429 are retried (RETRIES in a row; an attempt that brought bytes counts as a first failure).
BLOBS/<sha256> (0640, group GROUP), BLOBS/<sha256>.verified (written once it was hashed; fetch
trusts it, verify hashes again), PARTIAL/<sha256>.part (0600, dir 0700) resumed by Range.
Stdout, one line per event, never the token (RESULT's JSON is for programs, the rest for people):
  PRESENT sha path | MISSING sha path | VERIFIED sha path | DAMAGED sha path got=SHA
  PROGRESS sha path bytes total rate_bytes_s eta_s | DONE sha path bytes seconds
  NOSPACE need=N free=M path=STORE | ERROR path: why | MISMATCH path expected=SHA got=SHA
  RESULT {"exit": N, "files": [{"sha256", "path", "state", ...}]}
Exit: 0 done, 2 bad job, 3 not enough space (before any download), 4 a download did not match
its sha256 or its size (its partial deleted), 5 any other failure (partials kept for the next run).
"""

from __future__ import annotations

import fcntl
import grp
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import time
import urllib.error
from urllib.parse import quote, urlsplit
from urllib.request import HTTPRedirectHandler, ProxyHandler, Request, build_opener

# Shipped beside this file, whose directory python3 puts first on sys.path.
from model_store import BAD_JOB, CHUNK, FAILED, MISMATCH, NOSPACE, OK, Stop, Store, hash_file, say

PATHS = ("store", "blobs", "partial")
REQUIRED = (*PATHS, "group", "files")
DEFAULTS = {"mode": "fetch", "allow_http": False, "token": None, "reserve_bytes": 0, "retries": 5}
DEFAULTS.update(backoff_s=1.0, timeout_s=60.0, progress_every_s=10.0, run=None)  # run: a label
DEFAULTS.update(metadata_host="metadata.google.internal", gcs_base="https://storage.googleapis.com")
TOKEN_PATH = "/computeMetadata/v1/instance/service-accounts/default/token"
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
TOKEN = re.compile(r"[\x21-\x7e]+\Z")  # one line of printable ASCII: a header can carry it
NET_ERRORS = (OSError, http.client.HTTPException)  # timeouts, resets, short reads, refusals


class Transient(Exception):
    """Worth another try, resuming from where the partial ends."""


def good_file(item: object, schemes: tuple) -> bool:
    get = item.get if isinstance(item, dict) else {}.get
    size, path = get("size"), get("path")
    sized = type(size) is int and size >= 0 and SHA256.match(str(get("sha256"))) is not None
    named = isinstance(path, str) and not re.search(r"[\x00-\x1f]", path)
    return sized and named and str(get("url")).startswith(schemes)


def load_job(path: str) -> dict:
    """The job in PATH with its defaults, each sha256 once; Stop(BAD_JOB) naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            given = json.load(f)
    except (OSError, ValueError) as exc:
        raise Stop(BAD_JOB, f"ERROR job: cannot read {path}: {exc}") from None
    given = given if isinstance(given, dict) else {"not a JSON object": given}
    unknown = sorted(set(given) - set(DEFAULTS) - set(REQUIRED))
    missing = [key for key in REQUIRED if key not in given]
    job = dict(DEFAULTS, **given)
    schemes = ("gs://", "https://") + (("http://",) if job["allow_http"] is True else ())
    numbers = ("retries", "reserve_bytes", "backoff_s", "timeout_s", "progress_every_s")
    relative = [k for k in PATHS if not os.path.isabs(str(job.get(k, "/")))]
    token, token_ok = job["token"], job["token"] is None  # a token goes in a header: one line
    token_ok = token_ok or (isinstance(token, str) and TOKEN.match(token) is not None)
    for bad, why in (  # in order: each rule may count on the ones before
        (lambda: unknown or missing, f"unknown keys {unknown}, missing keys {missing}"),
        (lambda: relative, f"not an absolute path: {', '.join(relative)}"),
        (lambda: job["mode"] not in ("fetch", "verify"), 'mode must be "fetch" or "verify"'),
        (lambda: not re.match(r"https?://[^/?#]+/?\Z", str(job["gcs_base"])), "bad gcs_base"),
        (lambda: not re.match(r"[\w.:\[\]-]+\Z", str(job["metadata_host"])), "bad metadata_host"),
        (lambda: any(type(job[k]) not in (int, float) or job[k] < 0 for k in numbers),
         f"each of {', '.join(numbers)} must be a number >= 0"),
        (lambda: not token_ok,
         "token must be a string or null: one line of printable ASCII (not shown)"),
        (lambda: not isinstance(job["files"], list), "files must be a list"),
        (lambda: not all(good_file(item, schemes) for item in job["files"]),
         f"each file needs sha256 (64 hex), size, path, url ({', '.join(schemes)})"),
    ):  # fmt: skip
        if bad():
            raise Stop(BAD_JOB, "ERROR job: " + why)
    unique: dict = {}
    for item in job["files"]:
        unique.setdefault(item["sha256"], item)
    return dict(job, files=list(unique.values()))


class Redirects(HTTPRedirectHandler):
    """Follows redirects to SCHEMES only: none where a token goes, as urllib would pass it on."""

    def __init__(self, *schemes: str) -> None:
        self.schemes = schemes

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme in self.schemes:
            return super().redirect_request(req, fp, code, msg, headers, newurl)
        return None  # urllib then raises HTTPError with the 3xx status


class Fetcher:
    """Downloads for one run: the openers and the metadata server's token, cached."""

    def __init__(self, job: dict, store: Store) -> None:
        self.job, self.store, self.timeout = job, store, job["timeout_s"]
        self.gcs_base = job["gcs_base"].rstrip("/") + "/storage/v1"
        self.token, self.token_until = job["token"], float("inf") if job["token"] else 0.0
        schemes = ("https", "http") if job["allow_http"] is True else ("https",)
        self.web, self.gcs = build_opener(Redirects(*schemes)), build_opener(Redirects())
        self.metadata = build_opener(ProxyHandler({}), Redirects())  # never through a proxy

    def shown(self, exc: Exception) -> str:
        """EXC as words, with no token in them (in any quoting)."""
        text = f"{exc}" if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        for token in (t for t in (self.token, self.job["token"]) if t):  # printable: as written
            text = text.replace(token, "<token>")
        return text

    def bearer(self, refresh: bool) -> str:
        if self.token and not refresh and time.time() < self.token_until:
            return self.token
        url = f"http://{self.job['metadata_host']}{TOKEN_PATH}"
        request = Request(url, headers={"Metadata-Flavor": "Google"})
        try:
            with self.metadata.open(request, timeout=self.timeout) as response:
                answer = json.loads(response.read(1 << 16).decode())
            token = answer["access_token"]
            if not TOKEN.match(token):  # a str (else TypeError, below) of printable ASCII
                raise Stop(FAILED, "ERROR metadata server: its access_token is not one line")
            self.token = token
            self.token_until = time.time() + float(answer.get("expires_in", 300)) - 60
            return self.token
        except NET_ERRORS as exc:
            if getattr(exc, "code", 500) < 500:  # an HTTPError: 403, 404, ...
                why = f"{exc} (has the VM a service account?)"
                raise Stop(FAILED, f"ERROR metadata server: {why}") from None
            raise Transient(f"metadata server: {exc}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise Stop(FAILED, "ERROR metadata server: no access_token in its answer") from None

    def response(self, item: dict, start: int, refresh: bool = False):  # type: ignore[no-untyped-def]
        """The answer to a GET from START; None when the server has nothing past it (416)."""
        url, opener, headers = item["url"], self.web, {"Range": f"bytes={start}-"} if start else {}
        try:
            if url.startswith("gs://"):
                bucket, _, name = url[len("gs://") :].partition("/")
                url = f"{self.gcs_base}/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
                url, opener = url + "?alt=media", self.gcs
                headers["Authorization"] = "Bearer " + self.bearer(refresh)
            url = re.sub(r"[^\x00-\x7f]", lambda c: quote(c.group()), url)  # as browsers do
            return opener.open(Request(url, headers=headers), None, self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416:
                return None
            if exc.code == 401 and opener is self.gcs and not self.job["token"] and not refresh:
                return self.response(item, start, True)  # revoked? ask for a new one, once
            if exc.code == 429 or exc.code >= 500:
                raise Transient(f"HTTP {exc.code} {exc.reason}") from None
            hint = " (the token was refused)" if exc.code == 401 else ""
            why = f"HTTP {exc.code} {exc.reason}{' (not followed)' if exc.code < 400 else hint}"
            raise Stop(FAILED, f"ERROR {item['path']}: {why}") from None
        except NET_ERRORS as exc:
            raise Transient(str(exc) or type(exc).__name__) from None

    def fetch(self, item: dict) -> dict:
        """Resumes or starts the partial, retries what is transient, verifies, installs."""
        sha, size, path, started = item["sha256"], item["size"], item["path"], time.monotonic()
        part = self.store.part(sha)
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "r+b") as f:
            download = Download(f, hash_file(part), item, self.job["progress_every_s"])
            failures = 0
            while True:
                before = download.have
                try:
                    download.attempt(self.response)
                    break
                except Transient as exc:
                    failures = 1 if download.have > before else failures + 1  # progress: anew
                    if failures > self.job["retries"]:
                        why = f"{exc} (after {self.job['retries']} retries)"
                        raise Stop(FAILED, f"ERROR {path}: {why}") from None
                    time.sleep(min(self.job["backoff_s"] * 2 ** (failures - 1), 30))
            f.flush()
            os.fsync(f.fileno())
        have = download.have
        got = download.digest.hexdigest() if have <= size else f"more-than-{size}-bytes"
        if got != sha or have < size:  # short: refused even when its sha256 is the one named
            os.unlink(part)
            short = f" ({have} of {size} bytes)" if have < size else ""
            raise Stop(MISMATCH, f"MISMATCH {path} expected={sha} got={got}{short}")
        self.store.install(sha)
        seconds = round(time.monotonic() - started, 3)
        say("DONE", sha, path, size, seconds)
        return {"state": "fetched", "bytes": size, "seconds": seconds}


class Download:
    """One partial file and the sha256 of the bytes in it, appended to as they arrive."""

    def __init__(self, f, digest, item: dict, every: float) -> None:  # type: ignore[no-untyped-def]
        self.f, self.digest, self.item, self.every, self.moved = f, digest, item, every, 0
        self.sha, self.path, self.size = item["sha256"], item["path"], item["size"]
        self.have = self.f.seek(0, os.SEEK_END)
        self.start = self.last = time.monotonic()

    def attempt(self, get) -> None:  # type: ignore[no-untyped-def]
        """Appends until the partial holds SIZE bytes (or more: a mismatch), or raises."""
        response = get(self.item, self.have) if self.have < self.size else None
        if response is None:
            return  # complete, or a 416: the hash says whether it is right
        with response:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
            begins = 0 if response.status == 200 else int(match.group(1)) if match else -1
            if response.status not in (200, 206) or begins not in (0, self.have):
                why = f"answer {response.status} starts at byte {begins}, not {self.have}"
                raise Stop(FAILED, f"ERROR {self.path}: {why}")
            if begins == 0 and self.have:  # the server ignored Range: start again
                self.have, self.digest = self.f.seek(0), hashlib.sha256()
                self.f.truncate()  # at the position, 0
            while self.have <= self.size:
                try:
                    chunk = response.read(CHUNK)
                except NET_ERRORS as exc:
                    raise Transient(str(exc) or type(exc).__name__) from None
                if not chunk:
                    break
                self.f.write(chunk)
                self.digest.update(chunk)
                self.have += len(chunk)
                self.progress(len(chunk))
        if self.have < self.size:
            raise Transient(f"connection closed at byte {self.have} of {self.size}")

    def progress(self, count: int) -> None:
        self.moved, now = self.moved + count, time.monotonic()
        if now - self.last >= self.every:
            self.last, rate = now, self.moved / max(now - self.start, 1e-6)
            eta = int((self.size - self.have) / rate)  # RATE > 0: COUNT bytes just came
            say("PROGRESS", self.sha, self.path, self.have, self.size, int(rate), eta)


def run(job: dict, results: list) -> int:
    try:
        gid = grp.getgrnam(job["group"]).gr_gid
    except KeyError:
        raise Stop(BAD_JOB, f"ERROR job: no group {job['group']!r} on this host") from None
    store = Store(*(job[k] for k in PATHS), gid)
    with open(os.path.join(store.partial, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run at a time per store
        todo = []
        for item in job["files"]:
            present = job["mode"] == "fetch" and store.recorded(item["sha256"], item["size"])
            state = "present" if present else store.check(item)
            if state in ("present", "missing"):
                say(state.upper(), item["sha256"], item["path"])
            results.append({"sha256": item["sha256"], "path": item["path"], "state": state})
            todo += [(item, results[-1])] if state in ("missing", "damaged") else []
        if job["mode"] == "verify" or not todo:
            return OK
        need = job["reserve_bytes"]
        for item, _ in todo:
            part = store.part(item["sha256"])
            need += max(item["size"] - (os.path.getsize(part) if os.path.exists(part) else 0), 0)
        free = shutil.disk_usage(store.root).free
        if need > free:
            raise Stop(NOSPACE, f"NOSPACE need={need} free={free} path={store.root}")
        fetcher = Fetcher(job, store)
        for item, entry in todo:
            entry["state"] = "failed"  # until the fetch returns
            try:
                entry.update(fetcher.fetch(item))
            except (OSError, ValueError) as exc:  # ValueError: a URL or header urllib refuses
                raise Stop(FAILED, f"ERROR {item['path']}: {fetcher.shown(exc)}") from None
    return OK


def main(argv: list) -> int:
    if len(argv) != 2:
        print(f"usage: python3 {argv[0]} JOB.json", file=sys.stderr)
        return BAD_JOB
    results: list = []
    try:
        code = run(load_job(argv[1]), results)
    except Exception as exc:  # a Stop, the store's OSError, or a fault here (its type only)
        code, line = exc.args if isinstance(exc, Stop) else (FAILED, f"ERROR store: {exc}")
        line = line if isinstance(exc, (Stop, OSError)) else f"ERROR fetcher: {type(exc).__name__}"
        say(line)
    say("RESULT", json.dumps({"exit": code, "files": results}))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
