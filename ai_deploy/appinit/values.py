"""The values `ai-deploy init` is given, each checked for where it goes: the printed shell and
CEL (project, zone, instance, repository and its id, service account), the workflow's YAML and
the GitHub environment (environment). A value breaks none of them when it has the shape GCP and
GitHub allow for its kind, so anything else is refused, naming the value and the rule: a
quote, `$(...)` or a YAML keyword never reaches a file or a pasted command."""

from __future__ import annotations

import re
from dataclasses import dataclass

# YAML 1.1 reads these plain scalars as null or booleans (`environment: null` is no environment).
_YAML_WORDS = frozenset(("null", "~", "true", "false", "yes", "no", "on", "off", "y", "n"))


@dataclass(frozen=True)
class Rule:
    pattern: str
    says: str


RULES = {
    "project": Rule(
        r"(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]",
        "a GCP project id: 6 to 30 lower-case letters, digits and hyphens, starting with a "
        "letter and not ending with a hyphen",
    ),
    "zone": Rule(r"[a-z]+(?:-[a-z]+[0-9]+)+-[a-z]", "a GCP zone such as us-central1-a"),
    "instance": Rule(
        r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?",
        "a Compute Engine instance name: 1 to 63 lower-case letters, digits and hyphens, "
        "starting with a letter and not ending with a hyphen",
    ),
    "repository": Rule(
        r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}/(?!\.\.?$)[A-Za-z0-9._-]{1,100}",
        "OWNER/REPO as GitHub spells them: an owner of letters, digits and single hyphens (39 "
        "at most), a repository of letters, digits, '.', '_' and '-'",
    ),
    "repository id": Rule(
        r"[1-9][0-9]{0,19}",
        "the repository's number, as `gh api repos/OWNER/REPO --jq .id` prints it",
    ),
    "environment": Rule(
        r"[A-Za-z][A-Za-z0-9_-]{0,254}",
        "a GitHub environment name of letters, digits, '_' and '-', starting with a letter, "
        "and not a YAML keyword (null, true, false, yes, no, on, off)",
    ),
    "service account": Rule(
        r"[a-z][a-z0-9-]{4,28}[a-z0-9]",
        "a service account id: 6 to 30 lower-case letters, digits and hyphens, starting with "
        "a letter and not ending with a hyphen",
    ),
}


class BadValue(ValueError):
    """A value init was given breaks its rule; the message names both."""


def check(kind: str, value: str, option: str) -> str:
    """VALUE when it keeps the rule of KIND (see RULES); BadValue naming OPTION otherwise."""
    rule = RULES[kind]
    ok = re.fullmatch(rule.pattern, value, flags=re.ASCII) is not None
    if kind == "environment" and value.lower() in _YAML_WORDS:
        ok = False
    if not ok:
        raise BadValue(f"{option} {value!r} is not {rule.says}")
    return value


__all__ = ["RULES", "BadValue", "check"]
