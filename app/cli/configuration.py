"""The ``--config`` option every command takes, the one way a bad configuration ends a
command, and ``jobnode config check``."""

from __future__ import annotations

import json

import click

from app.config.loading import load_settings
from app.config.masking import masked
from app.config.settings import Settings
from app.config.values import ConfigError

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="JOBNODE_CONFIG",
    help="JSON config file (default: all defaults, SQLite jobnode.db).",
)


class InvalidConfiguration(click.ClickException):
    """``Error: invalid configuration: <key>: …``, exit status 2: starting again will not
    help (a database that cannot be reached exits with 1)."""

    exit_code = 2

    def __init__(self, error: ValueError) -> None:
        super().__init__(f"invalid configuration: {error}")


def settings_for(config_path: str | None) -> Settings:
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise InvalidConfiguration(exc) from None


@click.group("config")
def config_group() -> None:
    """The configuration (file, then environment variables)."""


@config_group.command("check")
@config_option
def config_check(config_path: str | None) -> None:
    """Print the effective configuration as JSON, secrets as "***"; exit 2 naming the key
    when something is wrong. Reads no database."""
    settings = settings_for(config_path)
    if settings.ignored_keys:
        click.echo(f"config keys ignored (Infernet-only): {', '.join(settings.ignored_keys)}", err=True)
    click.echo(json.dumps(masked(settings), indent=2))
