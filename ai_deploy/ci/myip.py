"""The runner's public IPv4 address, asked from a "what is my IP" service.

The firewall window allows tcp:22 from exactly this address (a /32), so the answer is checked
strictly before anything is created in GCP: it must be one IPv4 literal and nothing else.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping, Sequence

import requests

__all__ = [
    "DEFAULT_MYIP_URLS",
    "DEFAULT_TIMEOUT_S",
    "MYIP_URLS_ENV",
    "RunnerIpError",
    "myip_urls",
    "parse_ipv4_answer",
    "runner_ip",
]

logger = logging.getLogger(__name__)

MYIP_URLS_ENV = "AI_DEPLOY_MYIP_URLS"
# A primary and a fallback run by different operators, so one outage does not stop a deploy.
DEFAULT_MYIP_URLS: tuple[str, ...] = ("https://ifconfig.me/ip", "https://api.ipify.org")
DEFAULT_TIMEOUT_S = 5.0

# Read no more than this from an answer: an address is at most 15 characters, and an HTML
# error page or anything else large is wrong whatever it says.
_MAX_ANSWER_BYTES = 256
_SHOWN_ANSWER_CHARS = 60
_IPV4_LITERAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_OS_ERROR = re.compile(r"\[Errno -?[0-9]+\][^'\")]*")


class RunnerIpError(RuntimeError):
    """No "what is my IP" URL gave a usable IPv4 address; the message says what each answered."""


def myip_urls(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The URLs to ask, in order: AI_DEPLOY_MYIP_URLS (comma-separated) when set and not empty,
    else DEFAULT_MYIP_URLS. Blank entries are dropped."""
    environ = os.environ if env is None else env
    raw = environ.get(MYIP_URLS_ENV, "")
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    return urls or DEFAULT_MYIP_URLS


def _shown(text: str) -> str:
    """TEXT as it goes into an error message: quoted, escaped and cut short."""
    if len(text) > _SHOWN_ANSWER_CHARS:
        return repr(text[:_SHOWN_ANSWER_CHARS]) + "..."
    return repr(text)


def parse_ipv4_answer(text: str) -> str:
    """The IPv4 address in TEXT, which must hold exactly one dotted-quad literal and only
    surrounding whitespace. Raises ValueError (saying what is wrong) for anything else: an empty
    answer, several lines or words, HTML, an IPv6 address, leading zeros, out-of-range octets,
    and addresses no host can have (0.0.0.0, multicast, reserved, broadcast). Loopback and
    private addresses are accepted: a runner inside a network may legitimately have one."""
    stripped = text.strip()
    if not stripped:
        raise ValueError("the answer is empty")
    if not _IPV4_LITERAL.fullmatch(stripped):
        if ":" in stripped and _looks_like_ipv6(stripped):
            raise ValueError(f"{_shown(stripped)} is an IPv6 address; the rule needs IPv4")
        raise ValueError(f"{_shown(stripped)} is not a single IPv4 address")
    try:
        address = ipaddress.IPv4Address(stripped)
    except ValueError as exc:
        raise ValueError(f"{_shown(stripped)} is not a valid IPv4 address ({exc})") from None
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        raise ValueError(f"{stripped} is not a host address")
    return str(address)


def _looks_like_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _request_failure(exc: requests.RequestException) -> str:
    """The useful part of a requests error: the OS error when there is one, else its type."""
    found = _OS_ERROR.search(str(exc))
    return found.group(0) if found else type(exc).__name__


def _ask(session: requests.Session, url: str, timeout: float) -> str:
    """The address URL answers with; raises ValueError or requests.RequestException otherwise."""
    with session.get(url, timeout=timeout, stream=True, headers={"Accept": "text/plain"}) as resp:
        body = b""
        for chunk in resp.iter_content(chunk_size=_MAX_ANSWER_BYTES):
            body += chunk
            if len(body) > _MAX_ANSWER_BYTES:
                break
        if resp.status_code != 200:
            answer = body.decode("utf-8", errors="replace").strip()
            raise ValueError(f"HTTP {resp.status_code} {_shown(answer)}")
    if len(body) > _MAX_ANSWER_BYTES:
        raise ValueError(
            f"the answer is longer than {_MAX_ANSWER_BYTES} bytes, starting "
            f"{_shown(body.decode('utf-8', errors='replace'))}"
        )
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(
            f"the answer is not plain ASCII: {_shown(body.decode('utf-8', errors='replace'))}"
        ) from None
    return parse_ipv4_answer(text)


def runner_ip(
    urls: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    session: requests.Session | None = None,
) -> str:
    """This machine's public IPv4 address as a "what is my IP" service sees it.

    Asks each of URLS in turn (default: myip_urls(), i.e. AI_DEPLOY_MYIP_URLS or the built-in
    primary and fallback) with TIMEOUT seconds per request, and returns the first answer that
    parse_ipv4_answer() accepts. Never returns anything but one valid IPv4 address: when every
    URL fails (connection error, timeout, non-200 status, or an answer that is not exactly one
    IPv4 address) it raises RunnerIpError naming each URL and what it answered, truncated.
    """
    candidates = tuple(urls) if urls is not None else myip_urls()
    if not candidates:
        raise RunnerIpError(f"no 'what is my IP' URL to ask: set {MYIP_URLS_ENV}")
    failures: list[str] = []
    own_session = session is None
    http = requests.Session() if session is None else session
    try:
        for url in candidates:
            try:
                address = _ask(http, url, timeout)
            except requests.Timeout:
                reason = f"no answer within {timeout:g} s"
            except requests.RequestException as exc:
                reason = f"request failed: {_request_failure(exc)}"
            except ValueError as exc:
                reason = str(exc)
            else:
                logger.debug("runner IP %s from %s", address, url)
                return address
            logger.warning("could not get the runner's IP from %s: %s", url, reason)
            failures.append(f"{url}: {reason}")
    finally:
        if own_session:
            http.close()
    raise RunnerIpError(
        "could not determine this runner's public IPv4 address; "
        + "; ".join(failures)
        + f". Check the network, or point {MYIP_URLS_ENV} at a service that answers with "
        "the address alone."
    )
