"""`models.toml` at the artifact's root: the model files a release needs, checked on the deployer:

    [[models]]                 # name: [a-z0-9][a-z0-9._-]*, version: [A-Za-z0-9][A-Za-z0-9._-]*
    name = "demo-model"
    version = "2026-11-01"
      [[models.files]]         # path: inside the model's directory; url: https:// or gs://
      path = "weights.bin"
      url = "gs://bucket/models/demo/weights.bin"
      sha256 = "<64 lower-case hex>"
      size = 123456789
Every problem is reported, each naming its entry: `models[1] "demo-model" files[0] "w.bin": ...`.
"""

from __future__ import annotations

import difflib
import json
import re
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FILENAME = "models.toml"
MAX_MANIFEST_BYTES = 1 << 20
ALLOW_HTTP_SETTING = "models_allow_http"  # named in the message refusing http://

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUCKET_RULES = "3-222 of a-z 0-9 - _ ., parts between dots 1-63 starting and ending a-z 0-9"
_PART = r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?"
_BUCKET = re.compile(rf"(?=.{{3,222}}$)(?!goog|.*google|\d+(?:\.\d+){{3}}$){_PART}(?:\.{_PART})*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KINDS = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array"}
_MODEL_FIELDS = {"name": str, "version": str, "files": list}
_FILE_FIELDS = {"path": str, "url": str, "sha256": str, "size": int}
_Seen = dict[str, tuple[str, int]]  # a model's paths and their prefixes: (file or dir, index)
_PATH_RULES = (
    (lambda p: _CONTROL.search(p), "contains a control character (NUL, newline, ...)"),
    (lambda p: "\\" in p, "contains a backslash: separate directories with /"),
    (lambda p: p.startswith("/"), "is absolute: give it relative to the model's directory"),
    (lambda p: len(p.encode()) > 255, "is longer than 255 bytes"),
    (lambda p: ".." in p.split("/"), "contains '..': it must stay in the model's directory"),
    (lambda p: {"", "."} & set(p.split("/")), "has an empty or '.' part: write a/b, not ./a//b"),
)


@dataclass(frozen=True)
class ModelFile:
    path: str  # inside the model's directory
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    files: tuple[ModelFile, ...]


class ManifestError(ValueError):
    """The manifest is unusable: one line per problem, each naming its entry."""


def _kind(value: Any) -> str:
    found = (name for kind, name in _KINDS.items() if isinstance(value, kind))
    return next(found, "a table" if isinstance(value, dict) else type(value).__name__)


def _label(base: str, value: Any) -> str:
    return f"{base} {json.dumps(value, ensure_ascii=False)}" if isinstance(value, str) else base


def _fields(entry: dict[str, Any], fields: dict[str, type], label: str, out: list[str]) -> bool:
    """Adds missing keys, values of the wrong type and unknown keys (naming the nearest allowed
    one) to OUT; True when every field is there with its type."""
    before = len(out)
    for key, want in fields.items():
        if key not in entry:
            out.append(f"{label}: missing {key!r}")
        elif isinstance(entry[key], bool) or not isinstance(entry[key], want):
            out.append(f"{label}: {key} must be {_KINDS[want]} (got {_kind(entry[key])})")
    typed = len(out) == before
    for key in sorted(set(entry) - set(fields)):
        near = difflib.get_close_matches(key, list(fields), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        out.append(f"{label}: unknown key {key!r} ({hint}allowed: {', '.join(fields)})")
    return typed


def _name_problem(value: str, what: str, pattern: re.Pattern[str]) -> str | None:
    if len(value) <= 64 and pattern.fullmatch(value):
        return None
    lower = " (lower case only)" if pattern.fullmatch(value.lower()) else ""
    quoted = json.dumps(value, ensure_ascii=False)
    return f"{what} {quoted} must match {pattern.pattern}{lower}, at most 64 characters"


def _url_problem(url: str, allow_http: bool) -> str | None:
    scheme, sep, rest = url.partition("://")
    if len(url) > 2048 or _CONTROL.search(url):
        return "url must be at most 2048 characters, with no control characters"
    if sep and scheme == "gs":
        bucket, _, obj = rest.partition("/")
        if not bucket or not obj or obj in (".", "..") or len(obj.encode()) > 1024:
            return f"url {url!r} must be gs://BUCKET/OBJECT (an object name of 1-1024 bytes)"
        ok = _BUCKET.fullmatch(bucket)
        return None if ok else f"url {url!r}: {bucket!r} is not a bucket name ({_BUCKET_RULES})"
    if sep and scheme == "http" and not allow_http:
        why = f"use https:// or gs://, or set {ALLOW_HTTP_SETTING} = true"
        return f"url {url!r}: plain http:// is refused (it travels unencrypted): {why}"
    if not sep or scheme not in ("https", "http"):
        allowed = "https://, gs:// or http://" if allow_http else "https:// or gs://"
        return f"url {url!r} must start with {allowed}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an IPv6 address without its closing ]
        return f"url {url!r} is not a valid URL ({exc})"
    if any(c.isspace() for c in url) or "@" in parts.netloc:
        return f"url {url!r}: no whitespace (percent-encode it) and no user@ (it would be logged)"
    if not (parts.hostname or "").isascii():
        return f"url {url!r}: write the host name in ASCII (its xn-- form)"
    try:
        return None if parts.hostname and parts.port != 0 else f"url {url!r} has no host"
    except ValueError:
        return f"url {url!r} has a bad port"


def _sha_problem(value: str) -> str | None:
    if _SHA256.fullmatch(value.lower()):
        lower = f"sha256 must be lower case (got upper case letters): write {value.lower()}"
        return None if value == value.lower() else lower
    bad = "".join(sorted({c for c in value if c not in "0123456789abcdefABCDEF"}))
    return f"sha256 must be 64 hex characters (got {len(value)}{f', with {bad!r}' if bad else ''})"


class _Checker:
    """Walks the parsed TOML collecting every problem; sizes: sha256 -> (size, where first)."""

    def __init__(self, where: str, allow_http: bool) -> None:
        self.where, self.allow_http, self.problems = where, allow_http, list[str]()
        self.sizes: dict[str, tuple[int, str]] = {}
        self.names: dict[str, int] = {}

    def add(self, label: str, problem: Any) -> None:  # a falsy PROBLEM is none
        self.problems += [f"{label}: {problem}"] if problem else []

    def model(self, index: int, entry: Any) -> Model | None:
        if not isinstance(entry, dict):
            return self.add(f"{self.where}: models[{index}]", f"is {_kind(entry)}, not a table")
        label = f"{self.where}: {_label(f'models[{index}]', entry.get('name'))}"
        before = len(self.problems)
        if not _fields(entry, _MODEL_FIELDS, label, self.problems):
            return None
        first = self.names.setdefault(entry["name"], index)
        self.add(label, first != index and f"name is already used by models[{first}]")
        self.add(label, _name_problem(entry["name"], "name", _NAME))
        self.add(label, _name_problem(entry["version"], "version", _VERSION))
        self.add(label, not entry["files"] and "files is empty: give each as [[models.files]]")
        seen: _Seen = {}
        files = [self.file(label, i, f, seen) for i, f in enumerate(entry["files"])]
        if len(self.problems) > before:
            return None
        return Model(entry["name"], entry["version"], tuple(f for f in files if f))

    def file(self, model: str, index: int, entry: Any, seen: _Seen) -> ModelFile | None:
        if not isinstance(entry, dict):
            return self.add(f"{model} files[{index}]", f"is {_kind(entry)}, not a table")
        label = f"{model} {_label(f'files[{index}]', entry.get('path'))}"
        before = len(self.problems)
        if not _fields(entry, _FILE_FIELDS, label, self.problems):
            return None
        path, url, sha, size = (entry[key] for key in _FILE_FIELDS)
        self.add(label, next((f"path {m}" for rule, m in _PATH_RULES if rule(path)), None))
        self.add(label, _url_problem(url, self.allow_http))
        self.add(label, _sha_problem(sha))
        self.add(label, f"size must not be negative (got {size})" if size < 0 else None)
        if len(self.problems) > before:
            return None
        parts = path.split("/")
        for end in range(1, len(parts) + 1):  # each prefix is a directory, the whole a file
            prefix, last = "/".join(parts[:end]), end == len(parts)
            kind, at = seen.setdefault(prefix, ("file" if last else "dir", index))
            if at != index and (kind == "file" or last):
                why = "same path" if kind == "file" and last else f"{prefix!r} is a {kind} there"
                self.add(label, f"path {path!r} clashes with files[{at}]: {why}")
                break
        known = self.sizes.setdefault(sha, (size, label.removeprefix(f"{self.where}: ")))
        if known[0] != size:
            self.add(label, f"sha256 {sha} has size {size} here but {known[0]} at {known[1]}")
        return ModelFile(path, url, sha, size)


def parse_manifest(text: str, *, allow_http: bool = False, where: str = FILENAME) -> list[Model]:
    """The models in TEXT, every rule checked; ManifestError listing each problem otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from exc
    check = _Checker(where, allow_http)
    _fields({"models": [], **data}, {"models": list}, where, check.problems)
    entries = data.get("models") if isinstance(data.get("models"), list) else []
    models = [check.model(index, entry) for index, entry in enumerate(entries)]
    if check.problems:
        raise ManifestError("\n".join(check.problems))
    return [model for model in models if model]


def manifest_from_artifact(path: Path, *, allow_http: bool = False) -> list[Model]:
    """The models of the artifact at PATH (its root's models.toml; [] when it has none)."""
    where = f"{path.name}: {FILENAME}"
    found, data = None, b""
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if [p for p in member.name.split("/") if p not in ("", ".")] == [FILENAME]:
                    found = member  # the last one wins, as when the release is extracted
                    small = member.isfile() and member.size <= MAX_MANIFEST_BYTES
                    stream = tar.extractfile(member) if small else None
                    data = stream.read() if stream else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise ManifestError(f"{path}: not a readable tar.gz: {exc}") from exc
    if found is None:
        return []
    if not found.isfile() or found.size > MAX_MANIFEST_BYTES:
        what = f"{found.size} bytes" if found.isfile() else "not a regular file"
        raise ManifestError(f"{where} must be a regular file of at most 1 MiB ({what})")
    try:
        return parse_manifest(data.decode(), allow_http=allow_http, where=where)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not UTF-8 text (byte {exc.start})") from exc


def blobs(models: Iterable[Model]) -> dict[str, ModelFile]:
    """Each distinct content once, by sha256 (the first file that has it), in manifest order."""
    found: dict[str, ModelFile] = {}
    for file in (file for model in models for file in model.files):
        found.setdefault(file.sha256, file)
    return found


def total_size(models: Iterable[Model]) -> int:
    """Bytes the blob store holds for MODELS: each distinct content counted once."""
    return sum(file.size for file in blobs(models).values())
