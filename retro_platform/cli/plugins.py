"""``retro-platform plugins``: what is installed and what each plugin registers."""

from __future__ import annotations

import json

import click

from retro_platform.cli.group import cli
from retro_platform.text_table import text_table


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the plugins as JSON.")
def plugins(as_json: bool) -> None:
    """List the installed plugins, their hooks and the names each registers.

    Built-in plugins are listed too: they load exactly as third-party ones do. Plugins that did
    not load (broken, or disabled) follow with the reason. Set RETRO_PLATFORM_LOAD_PLUGINS to a
    comma-separated list of plugin or distribution names to load only those third-party
    plugins, or RETRO_PLATFORM_DISABLE_PLUGINS to names that must not load.
    """
    from retro_platform.plugins import LOADED, plugin_info

    info = plugin_info()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [
        (
            plugin["name"],
            plugin["distribution"],
            plugin["version"],
            ", ".join(plugin["hooks"]),
            "; ".join(
                f"{family}: {', '.join(names)}" for family, names in plugin["registers"].items()
            ),
        )
        for plugin in info
        if plugin["registers"] or plugin["status"] == LOADED
    ]
    click.echo(text_table(("PLUGIN", "DISTRIBUTION", "VERSION", "HOOKS", "REGISTERS"), rows))
    problems = [plugin for plugin in info if plugin["status"] != LOADED]
    if problems:
        click.echo("\nNot loaded:")
        for plugin in problems:
            source = f" ({plugin['distribution']} {plugin['version']})"
            click.echo(f"  {plugin['name']}{source} {plugin['reason']}")
