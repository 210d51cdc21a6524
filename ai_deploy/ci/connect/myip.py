"""The runner's public IPv4 address, as two independent "what is my IP" services see it.

The firewall window allows tcp:22 from exactly this address (a /32), so the answer is checked
strictly before anything is created in GCP:

- only https URLs are asked (an http answer could be rewritten on the way);
- an answer must be one IPv4 literal and nothing else, and a global unicast address: private,
  shared (CGNAT), loopback, link-local, documentation, benchmarking, multicast, reserved and
  broadcast addresses are refused, since a rule for them would not be this runner's address;
- two services on different hosts must give the same answer; AI_DEPLOY_MYIP_SINGLE_SERVICE=true
  accepts one service's answer, and the output says it was not cross-checked;
- AI_DEPLOY_MYIP_ALLOW_NETWORKS (CIDRs) accepts a non-global answer inside those networks, for a
  runner that reaches the VM inside a private network; the output says so as well.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import requests

__all__ = [
    "DEFAULT_MYIP_URLS",
    "DEFAULT_TIMEOUT_S",
    "MYIP_ALLOW_NETWORKS_ENV",
    "MYIP_SINGLE_SERVICE_ENV",
    "MYIP_URLS_ENV",
    "MyIpSettings",
    "RunnerAddress",
    "RunnerIpError",
    "find_runner_address",
    "myip_urls",
    "non_global_reason",
    "parse_ipv4_answer",
    "runner_ip",
]

logger = logging.getLogger(__name__)

MYIP_URLS_ENV = "AI_DEPLOY_MYIP_URLS"
MYIP_SINGLE_SERVICE_ENV = "AI_DEPLOY_MYIP_SINGLE_SERVICE"
MYIP_ALLOW_NETWORKS_ENV = "AI_DEPLOY_MYIP_ALLOW_NETWORKS"
# Run by different operators: two must agree, the third stands in when one is down.
DEFAULT_MYIP_URLS: tuple[str, ...] = (
    "https://api.ipify.org",
    "https://ifconfig.me/ip",
    "https://checkip.amazonaws.com",
)
DEFAULT_TIMEOUT_S = 5.0

# Read no more than this from an answer: an address is at most 15 characters, and an HTML
# error page or anything else large is wrong whatever it says.
_MAX_ANSWER_BYTES = 256
_SHOWN_ANSWER_CHARS = 60
_IPV4_LITERAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_OS_ERROR = re.compile(r"\[Errno -?[0-9]+\][^'\")]*")
_TRUE = ("true", "1", "yes", "on")

# Every IPv4 range that is not global unicast, with what people call it (RFC 6890 and friends).
_NOT_GLOBAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), what)
    for net, what in (
        ("0.0.0.0/8", "a 'this network' address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
    )
)


class RunnerIpError(RuntimeError):
    """No usable, agreed IPv4 address for this runner; the message says what each service
    answered and which setting to change."""


@dataclass(frozen=True)
class RunnerAddress:
    """The runner's address and how it was established.

    + address: the IPv4 address the firewall rule will allow
    + sources: the URLs whose answers gave it (two that agreed, or one when allowed)
    + notes: what a person reading the log should know (one service only, allowed network)
    """

    address: str
    sources: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MyIpSettings:
    """Where to ask and what to accept; `from_env()` reads the AI_DEPLOY_MYIP_* variables."""

    urls: tuple[str, ...] = DEFAULT_MYIP_URLS
    single_service: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MyIpSettings:
        """AI_DEPLOY_MYIP_URLS (comma-separated https URLs), AI_DEPLOY_MYIP_SINGLE_SERVICE
        (true: one service's answer is enough) and AI_DEPLOY_MYIP_ALLOW_NETWORKS (comma-separated
        IPv4 CIDRs in which a non-global answer is accepted). Raises RunnerIpError naming the
        variable for a value that cannot be used."""
        environ = os.environ if env is None else env
        single = environ.get(MYIP_SINGLE_SERVICE_ENV, "").strip().lower() in _TRUE
        networks = []
        for part in environ.get(MYIP_ALLOW_NETWORKS_ENV, "").split(","):
            if not part.strip():
                continue
            try:
                networks.append(ipaddress.IPv4Network(part.strip(), strict=True))
            except ValueError as exc:
                raise RunnerIpError(
                    f"{MYIP_ALLOW_NETWORKS_ENV}: {part.strip()!r} is not an IPv4 network in CIDR "
                    f"notation ({exc})"
                ) from None
        settings = cls(myip_urls(environ), single, tuple(networks))
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise RunnerIpError when the URLs cannot give an answer this accepts."""
        if not self.urls:
            raise RunnerIpError(f"no 'what is my IP' URL to ask: set {MYIP_URLS_ENV}")
        for url in self.urls:
            _check_url(url)
        if not self.single_service and len({_service(url) for url in self.urls}) < 2:
            raise RunnerIpError(
                f"{MYIP_URLS_ENV} names one service ({_service(self.urls[0])}); the runner's "
                "address needs two on different hosts that agree: add a second, or set "
                f"{MYIP_SINGLE_SERVICE_ENV}=true to trust one service's answer"
            )


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise RunnerIpError(f"{MYIP_URLS_ENV}: {url!r} is not a URL") from None
    if parts.scheme != "https" or not parts.hostname:
        raise RunnerIpError(
            f"{MYIP_URLS_ENV}: {url!r} is not an https URL; only https is asked, since a plain "
            "http answer could be changed on the way and would become the firewall rule's source"
        )


def _service(url: str) -> str:
    return (urllib.parse.urlsplit(url).hostname or url).lower()


def myip_urls(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The URLs to ask, in order: AI_DEPLOY_MYIP_URLS (comma-separated) when set and not empty,
    else DEFAULT_MYIP_URLS. Blank entries are dropped. Raises RunnerIpError naming the variable
    for a URL that is not https."""
    environ = os.environ if env is None else env
    raw = environ.get(MYIP_URLS_ENV, "")
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for url in urls:
        _check_url(url)
    return urls or DEFAULT_MYIP_URLS


def _shown(text: str) -> str:
    """TEXT as it goes into an error message: quoted, escaped and cut short."""
    if len(text) > _SHOWN_ANSWER_CHARS:
        return repr(text[:_SHOWN_ANSWER_CHARS]) + "..."
    return repr(text)


def non_global_reason(address: ipaddress.IPv4Address) -> str | None:
    """What ADDRESS is when it is not a global unicast address ("a private address
    (10.0.0.0/8)"), else None."""
    for network, what in _NOT_GLOBAL:
        if address in network:
            return f"{what} ({network})"
    if not address.is_global:  # whatever Python knows of that the table above does not
        return "not a global address"
    return None


def parse_ipv4_answer(text: str, allowed_networks: Sequence[ipaddress.IPv4Network] = ()) -> str:
    """The IPv4 address in TEXT, which must hold exactly one dotted-quad literal and only
    surrounding whitespace, and be a global unicast address (or lie in ALLOWED_NETWORKS).
    Raises ValueError (saying what is wrong) for anything else: an empty answer, several lines
    or words, HTML, an IPv6 address, leading zeros, out-of-range octets, and private, shared,
    loopback, link-local, documentation, multicast, reserved or broadcast addresses."""
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
    if any(address in network for network in allowed_networks):
        return str(address)
    why = non_global_reason(address)
    if why is not None:
        raise ValueError(
            f"{address} is {why}, not a global unicast address: no firewall rule for it would "
            f"match this runner (a runner inside a private network: {MYIP_ALLOW_NETWORKS_ENV})"
        )
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


def _ask(
    session: requests.Session,
    url: str,
    timeout: float,
    allowed_networks: Sequence[ipaddress.IPv4Network] = (),
) -> str:
    """The address URL answers with; raises ValueError or requests.RequestException otherwise."""
    # No redirects: one to an http URL would undo the https-only rule.
    with session.get(
        url,
        timeout=timeout,
        stream=True,
        headers={"Accept": "text/plain"},
        allow_redirects=False,
    ) as resp:
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
    return parse_ipv4_answer(text, allowed_networks)


def find_runner_address(
    settings: MyIpSettings | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    session: requests.Session | None = None,
) -> RunnerAddress:
    """This machine's public IPv4 address as independent "what is my IP" services see it.

    Asks the URLs of SETTINGS (default: MyIpSettings.from_env()) in order, TIMEOUT seconds
    each, over https only and following no redirect, until two services on different hosts
    have given an accepted answer (see parse_ipv4_answer()); those two must be the same address.
    With settings.single_service the first accepted answer is enough, and the result's notes
    say it was not cross-checked. Raises RunnerIpError naming each URL and what it answered
    when the answers disagree or too few services gave one.
    """
    settings = settings or MyIpSettings.from_env()
    settings.validate()
    needed = 1 if settings.single_service else 2
    failures: list[str] = []
    answers: dict[str, tuple[str, str]] = {}  # service host -> (url, address)
    own_session = session is None
    http = requests.Session() if session is None else session
    try:
        for url in settings.urls:
            if _service(url) in answers:
                continue  # another URL of a service that has answered: not independent
            try:
                address = _ask(http, url, timeout, settings.allowed_networks)
            except requests.Timeout:
                reason = f"no answer within {timeout:g} s"
            except requests.RequestException as exc:
                reason = f"request failed: {_request_failure(exc)}"
            except ValueError as exc:
                reason = str(exc)
            else:
                logger.debug("runner IP %s from %s", address, url)
                answers[_service(url)] = (url, address)
                if len(answers) == needed:
                    break
                continue
            logger.warning("could not get the runner's IP from %s: %s", url, reason)
            failures.append(f"{url}: {reason}")
    finally:
        if own_session:
            http.close()
    said = [f"{url} said {address}" for url, address in answers.values()]
    if len(answers) < needed:
        raise RunnerIpError(
            "could not determine this runner's public IPv4 address"
            + (f" from two services (only {said[0]})" if said else "")
            + "; "
            + "; ".join(failures)
            + f". Check the network, or point {MYIP_URLS_ENV} at https services that answer "
            "with the address alone"
            + ("" if settings.single_service else f" (or set {MYIP_SINGLE_SERVICE_ENV}=true)")
            + "."
        )
    addresses = {address for _, address in answers.values()}
    if len(addresses) > 1:
        raise RunnerIpError(
            "the 'what is my IP' services disagree about this runner's address ("
            + ", ".join(said)
            + "): one of them, or the way to it, is not telling the truth; no firewall rule "
            "is made for either"
        )
    address = addresses.pop()
    notes = []
    if settings.single_service:
        notes.append(
            f"the address comes from one service only ({MYIP_SINGLE_SERVICE_ENV}=true), "
            "not cross-checked"
        )
    parsed = ipaddress.IPv4Address(address)
    inside = [str(net) for net in settings.allowed_networks if parsed in net]
    if inside and non_global_reason(parsed):
        notes.append(
            f"{address} is not a global address; accepted because {MYIP_ALLOW_NETWORKS_ENV} "
            f"includes {inside[0]}"
        )
    return RunnerAddress(address, tuple(url for url, _ in answers.values()), tuple(notes))


def runner_ip(
    urls: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    session: requests.Session | None = None,
    single_service: bool = False,
) -> str:
    """find_runner_address(...).address, asking URLS (default: from the environment)."""
    if urls is None:
        settings = MyIpSettings.from_env()
        if single_service:
            settings = MyIpSettings(settings.urls, True, settings.allowed_networks)
    else:
        settings = MyIpSettings(tuple(urls), single_service)
    return find_runner_address(settings, timeout, session=session).address
