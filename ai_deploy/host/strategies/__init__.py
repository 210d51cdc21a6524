"""The deploy strategies, one module each behind the `Strategy` protocol (see base)."""

from __future__ import annotations

from typing import cast

from ai_deploy.host.strategies import bluegreen, restart, socket
from ai_deploy.host.strategies.base import Strategy

STRATEGIES: dict[str, Strategy] = {m.name: cast(Strategy, m) for m in (socket, restart, bluegreen)}


class UnknownStrategy(ValueError):
    pass


def get(name: str) -> Strategy:
    """The strategy called NAME (group_data deploy_strategy)."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategy(
            f"deploy_strategy {name!r} is not one of {', '.join(STRATEGIES)} (group_data)"
        ) from None


def others(name: str) -> list[Strategy]:
    return [s for n, s in STRATEGIES.items() if n != name]
