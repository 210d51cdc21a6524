"""What looks like a key or a token in text meant for people, and that text with it blanked.

Pure functions and one process-wide registry, no output: ai_deploy.report.secrets turns what is
found here into `::add-mask::` commands, the pyinfra stream, notifications and the job summary
print only redacted text. Over-masking a log line is cheap; a leaked key is not.

Shapes recognised (the .env stays on the VM, so these are what stands between an app's error
log and a public CI log):
- tokens by their prefix: OpenAI/Anthropic `sk-`, Stripe `sk_live_`/`rk_live_`/`whsec_`, AWS
  key ids, GitHub, GitLab, Slack, Hugging Face `hf_`, npm, Google API keys, OAuth access tokens
  and client secrets (`GOCSPX-`), JWTs;
- NAME=VALUE and NAME: VALUE where NAME ends in KEY, TOKEN, SECRET, PASSWORD, PWD, CREDENTIALS
  (snake_case, kebab-case, dotted, camelCase `clientSecret`, glued `PGPASSWORD`), and
  `--password VALUE` flags; a quoted value is taken whole, spaces included, and so is the rest
  of a line that is only the assignment (`PASSWORD=correct horse battery`);
- the password of a URL (`postgresql://u:PW@h`, `redis://:PW@h`), split as Python's urllib
  splits it (the userinfo ends at the last `@` before `/`, `?` or `#`);
- `Authorization:` credentials of any scheme (`Basic`, `Bearer`, `Digest`, ...) and `Bearer`
  tokens anywhere, in any case;
- signed-URL signatures (`X-Goog-Signature=`, `X-Amz-Signature=`, `Signature=`, `sig=`) and
  `X-Amz-Security-Token=`;
- private key blocks, and every value registered (the .env's, the SSH key).
Placeholders are not values: `$VAR`, `${VAR}`, `<key>`, `{{ tpl }}`, `***`, paths, and words
made of placeholder words only (`VALUE`, `YOUR_API_KEY`, `changeme`); any other all-capitals
value (`HUNTER2HUNTER2`) is a secret. `max_tokens=512` counts tokens and is left alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = [
    "MASK",
    "LineRedactor",
    "find_secrets",
    "known_values",
    "redact",
    "register",
]

MASK = "***"
MIN_KNOWN = 4  # shorter registered values ("1", "yes") would blank every occurrence

# Tokens recognisable by their shape alone.
_TOKEN_PATTERNS = (
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{8,}",  # OpenAI / Anthropic style keys
    r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{10,}",  # Stripe secret and restricted keys
    r"\bwhsec_[A-Za-z0-9+/=]{16,}",  # Stripe webhook signing secrets
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",  # GitLab personal access tokens
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack tokens
    r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face tokens
    r"\bnpm_[A-Za-z0-9]{30,}",  # npm tokens
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
    r"\bya29\.[0-9A-Za-z_.-]{20,}",  # Google OAuth access tokens
    r"\bGOCSPX-[0-9A-Za-z_-]{10,}",  # Google OAuth client secrets
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWTs
)
_TOKEN = re.compile("|".join(f"(?:{p})" for p in _TOKEN_PATTERNS))

# The name of a secret-holding setting. Before the keyword: words joined by _ . - (OPENAI_API_,
# x-api-), camelCase words (client, db, OpenAI, Api), or, before the longer keywords, anything
# glued on (PGPASSWORD, mytoken). A bare `key` needs a word boundary or a camel hump, so monkey
# and turkey are not names; `tokens` (max_tokens, prompt_tokens) is a count, not a token.
_CAMEL = r"(?:[a-z0-9]+(?=[A-Z])|[A-Z][a-z0-9]+(?=[A-Z])|[A-Z]+(?=[A-Z][a-z]))"
_NAME = (
    rf"(?<![A-Za-z0-9])(?:[A-Za-z0-9]{{1,40}}[_.-]|{_CAMEL}){{0,8}}"
    r"(?:[A-Za-z0-9]{0,40}(?i:password|passwd|passphrase|secret|token(?!s)|credential)"
    rf"|(?i:api[_-]?key|key|pwd))(?i:s)?(?![A-Za-z0-9])"
)
_QUOTED = r"(?P<q>[\"'])(?P<qvalue>(?:\\.|(?!(?P=q))[^\\\r\n])+)(?P=q)"
# JSON inside a JSON string: {"msg": "{\"password\": \"two words\"}"}
_ESCAPED = r"\\(?P<e>[\"'])(?P<evalue>(?:(?!\\(?P=e))[^\r\n])+)\\(?P=e)"
_WORD = r"[^\s\"',;&)}\]]+"
_SEPARATOR = r"\\?[\"']?[ \t]*(?:=|:(?!//))[ \t]*"
_ASSIGNMENT = re.compile(
    rf"{_NAME}{_SEPARATOR}(?:{_ESCAPED}|{_QUOTED}|(?P<value>(?!\\[\"']){_WORD}))"
)
# A line that is only an assignment (a .env or YAML line, `export X=...`) has the rest of the
# line as its value, spaces included; inside a sentence an unquoted value is one word.
_LINE = re.compile(
    rf"(?m)^[ \t]*(?:export[ \t]+|-[ \t]+)?{_NAME}{_SEPARATOR}"
    r"(?P<value>[^\s\"'][^\r\n]*?)[ \t]*\r?$"
)
_FLAG = re.compile(
    r"(?i)(?<![A-Za-z0-9-])--(?:[a-z0-9]+-)*(?:password|passphrase|secret|token|api-key)"
    rf"[ \t]+(?:{_QUOTED}|(?P<value>{_WORD}))"
)
_URL_PASSWORD = re.compile(
    r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:\"'<>]*:(?P<value>[^\s/?#\"'<>]+)@"
)
_AUTHORIZATION = re.compile(
    r"(?i)\b(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*(?P<open>[\"'])?"
    r"(?:basic|bearer|token|digest|negotiate|ntlm|oauth|apikey|key|aws4-hmac-sha256|gcp)"
    r"[ \t]+(?P<value>(?(open)[^\r\n\"']+|\S[^\r\n]*))"
)
_BEARER = re.compile(r"(?i)\bbearer[ \t]+(?P<value>[A-Za-z0-9._~+/-]{16,}=*)")
_SIGNATURE = re.compile(
    r"(?i)(?<![A-Za-z0-9_-])(?:x-(?:goog|amz)-signature|x-amz-security-token|signature|sig)"
    r"=(?P<value>[^&\s\"'#<>]+)"
)
_VALUED = (_ASSIGNMENT, _LINE, _FLAG, _URL_PASSWORD, _AUTHORIZATION, _BEARER, _SIGNATURE)

_PLACEHOLDER_WORDS = frozenset(
    re.split(
        r"\s+",
        "value values key api token secret password passwd pwd credential credentials your here "
        "example changeme change me redacted placeholder none null true false empty unset "
        "replace dummy fake todo xxx",
    )
)
_NOT_A_VALUE = re.compile(r"\\?[$<*/~]|\.\.?/|\{\{|%\(")

_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_PEM_BLOCK = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

_known: set[str] = set()


def register(values: Iterable[str]) -> None:
    """Remember VALUES (for example the .env's) so redact() blanks them wherever they appear."""
    for value in values:
        value = value.strip()
        if len(value) >= MIN_KNOWN:
            _known.add(value)
            _known.update(p.strip() for p in value.splitlines() if len(p.strip()) >= MIN_KNOWN)


def known_values() -> frozenset[str]:
    return frozenset(_known)


def _is_placeholder(value: str) -> bool:
    """Whether VALUE stands for a value: a variable, a path, a template, `***`, `xxx`, or words
    that are all placeholder words (`value`, `changeme`), or all capitals with one among them
    (`YOUR_OPENAI_KEY`); any other word (`HUNTER2`, `ABCDEFGHIJKL`) may be the secret."""
    if _NOT_A_VALUE.match(value) or re.fullmatch(r"(?i)x{3,}|\.{3}|\u2026", value):
        return True
    if not re.fullmatch(r"[A-Za-z]+(?:[_\-. ][A-Za-z]+)*", value):
        return False
    known = [word.lower() in _PLACEHOLDER_WORDS for word in re.split(r"[_\-. ]", value)]
    return all(known) or (value.isupper() and any(known))


def _valued_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """(start, end, quoted) of each value of a secret-holding assignment, flag, header, URL
    password or signature in TEXT, placeholders left out."""
    for pattern in _VALUED:
        for m in pattern.finditer(text):
            found = m.groupdict()
            group = next(g for g in ("evalue", "qvalue", "value") if found.get(g) is not None)
            if not _is_placeholder(m.group(group)):
                yield (*m.span(group), group != "value")


def _spans(text: str) -> list[tuple[int, int]]:
    """Every stretch of TEXT to blank, overlapping ones merged, in order."""
    spans = [m.span() for m in _PEM_BLOCK.finditer(text)]
    spans += [m.span() for m in _TOKEN.finditer(text)]
    spans += [(start, end) for start, end, _ in _valued_spans(text)]
    for value in _known:
        at = text.find(value)
        while at >= 0:
            spans.append((at, at + len(value)))
            at = text.find(value, at + len(value))
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        elif end > start:
            merged.append((start, end))
    return merged


def find_secrets(text: str) -> list[str]:
    """The key- or token-like values in TEXT, each once, longest first: shaped tokens, the
    values of KEY=/TOKEN=/SECRET=/PASSWORD= style assignments (an unquoted value of several
    words also by its first word), URL passwords, Authorization credentials, signatures,
    private key blocks (whole and line by line) and registered values that occur in it."""
    found: list[str] = []
    for block in _PEM_BLOCK.findall(text):
        found.append(block.strip())
        found += [line.strip() for line in block.splitlines() if line.strip()]
    found += [m.group(0) for m in _TOKEN.finditer(text)]
    for start, end, quoted in _valued_spans(text):
        value = text[start:end]
        found += [value] if quoted else [value, value.split()[0]]
    found += [value for value in _known if value in text]
    unique = {value.strip() for value in found if value.strip() and value.strip() != MASK}
    return sorted(unique, key=lambda v: (-len(v), v))


def redact(text: str) -> str:
    """TEXT with every value find_secrets() sees replaced by ***; the rest unchanged."""
    out, at = [], 0
    for start, end in _spans(text):
        out += [text[at:start], MASK]
        at = end
    text = "".join([*out, text[at:]])
    if "\x1b" in text:
        # A colour code right before a token hides its word boundary: look again without them.
        for value in find_secrets(_ANSI.sub("", text)):
            text = text.replace(value, MASK)
    return text


class LineRedactor:
    """redact() for a stream read line by line: a private key block split over lines is
    blanked from its BEGIN line to its END line."""

    def __init__(self) -> None:
        self._in_key = False

    def __call__(self, line: str) -> str:
        end = line[len(line.rstrip("\r\n")) :]
        if self._in_key:
            if _PEM_END.search(line):
                self._in_key = False
                return MASK + end
            return MASK + end
        begin = _PEM_BEGIN.search(line)
        if begin and not _PEM_END.search(line, begin.end()):
            self._in_key = True
            return redact(line[: begin.start()]) + MASK + end
        return redact(line)
