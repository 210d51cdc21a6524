"""`python -m ai_deploy.settings.pyinfra_main ARGS...`: pyinfra's own command line, with every
host's settings assembled by ai_deploy.settings.layers as soon as the inventory is loaded, so
ai-deploy.toml's ssh_user and ssh_key (and the SSH variables) reach the connection too, for any
inventory file. The `ai-deploy` commands run pyinfra this way; a plain `pyinfra INVENTORY
deploy.py` gets the same layers from deploy.py's first check, after connecting."""

from __future__ import annotations

from typing import Any


def main() -> None:
    import pyinfra_cli.cli as pyinfra_cli
    from pyinfra_cli.main import main as pyinfra_main

    from ai_deploy.settings.check import SettingsError
    from ai_deploy.settings.layers import apply_settings
    from ai_deploy.settings.pyinfra_hooks import stop

    load = pyinfra_cli.make_inventory

    def make_inventory(*args: Any, **kwargs: Any) -> Any:
        inventory = load(*args, **kwargs)
        try:
            apply_settings(inventory)
        except SettingsError as exc:
            raise stop("ai-deploy", exc.problems) from None
        return inventory

    pyinfra_cli.make_inventory = make_inventory
    pyinfra_main()


if __name__ == "__main__":
    main()
