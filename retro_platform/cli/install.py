"""``retro-platform install`` and ``uninstall``: pip, run by the interpreter retro-platform runs in.

Neither imports a plugin: a plugin is known here by its entry point's metadata alone, so both
work while an installed plugin is broken, which is when they are needed most. After an install,
the new plugins are loaded once in a fresh interpreter to say at once whether they work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click

from retro_platform.cli.group import cli
from retro_platform.errors import RetroPlatformError, did_you_mean

#: This project's distribution: never uninstalled by ``uninstall``.
PLATFORM = "retro-platform"


class PipError(RetroPlatformError):
    """pip could not do what was asked (its own output says why)."""


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("targets", nargs=-1)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the plugin if it is installed.")
@click.option(
    "-e",
    "--editable",
    "editables",
    multiple=True,
    metavar="FOLDER",
    help="Install this local folder in development mode (as pip's -e; repeatable).",
)
def install(targets: tuple[str, ...], upgrade: bool, editables: tuple[str, ...]) -> None:
    """Install plugins with pip, into the environment retro-platform runs in.

    TARGETS are what pip takes: a name on PyPI (retro-platform-scann), a local folder
    (./plugins/retro-platform-scann), a wheel file or a URL. Other pip options are passed on
    (e.g. --no-deps, --index-url URL). Each new plugin is then loaded once and reported: the
    names it registers, or why it failed to load.
    """
    if not targets and not editables:
        raise click.UsageError("Missing argument 'TARGETS...' (or -e FOLDER).")
    before = _entry_points()
    command = [sys.executable, "-m", "pip", "install"]
    command += ["--upgrade"] * upgrade
    # each -e keeps its own folder: a flag put before the pass-through arguments made pip read
    # the first of them as the folder (install --no-deps -e ./x: "--no-deps is not a valid
    # editable requirement")
    for folder in editables:
        command += ["--editable", folder]
    _pip([*command, *targets])
    after = _entry_points()
    changed = {name: dist for name, dist in after.items() if before.get(name) != dist}
    if not changed:
        click.echo(
            "Warning: nothing installed declares a new retro-platform plugin (an entry point "
            "in the group 'retro_platform'); run: retro-platform plugins",
            err=True,
        )
        return
    for plugin in _load_in_fresh_interpreter(sorted(changed)):
        source = f"{plugin['distribution']} {plugin['version']}"
        if plugin["status"] == "loaded":
            names = "; ".join(
                f"{family}: {', '.join(found)}" for family, found in plugin["registers"].items()
            )
            click.echo(f"installed plugin {plugin['name']!r} ({source}): {names or 'nothing'}")
        else:
            click.echo(
                f"Warning: installed plugin {plugin['name']!r} ({source}) {plugin['reason']}; "
                f"remove it with: retro-platform uninstall {plugin['distribution']}",
                err=True,
            )


@cli.command()
@click.argument("names", nargs=-1, required=True)
def uninstall(names: tuple[str, ...]) -> None:
    """Uninstall plugins with pip (without asking), by plugin or distribution name.

    Only distributions that declare a retro-platform plugin are uninstalled, never
    retro-platform itself or another package: a typo cannot remove torch.
    """
    from retro_platform.plugins import normalize

    installed = _entry_points()
    by_name = {normalize(plugin): dist for plugin, (dist, _) in installed.items()}
    by_name |= {normalize(dist): dist for dist, _ in installed.values()}
    chosen = []
    for name in names:
        if normalize(name) == PLATFORM:
            raise PipError(f"{PLATFORM} is the platform, not a plugin; to remove it use pip")
        dist = by_name.get(normalize(name))
        if dist is None:
            listed = ", ".join(sorted({dist for dist, _ in installed.values()})) or "none"
            raise PipError(
                f"{name!r} is not an installed retro-platform plugin"
                f"{did_you_mean(name, by_name)}; installed plugins: {listed}"
            )
        chosen.append(dist)
    _pip([sys.executable, "-m", "pip", "uninstall", "--yes", *dict.fromkeys(chosen)])
    for dist in dict.fromkeys(chosen):
        click.echo(f"uninstalled {dist}")


def _entry_points() -> dict[str, tuple[str, str]]:
    """Installed plugins: entry-point name -> (distribution, version), read fresh from disk."""
    import importlib

    from retro_platform.plugins import installed_entry_points

    importlib.invalidate_caches()  # pip just changed site-packages
    return {ep.name: (dist, version) for ep, dist, version in installed_entry_points()}


def _pip(command: list[str]) -> None:
    """Run pip with its output shown; a failure is a one-line error (pip has said why)."""
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise PipError(
            f"pip {command[3]} failed (exit code {done.returncode}); its messages above say why"
        )


def _load_in_fresh_interpreter(names: list[str]) -> list[dict]:
    """``plugins --json`` for ``names`` only, in a new interpreter: this one may have imported
    an older version of a plugin, and a plugin's import must not run in this process."""
    from retro_platform.plugins import DISABLE_PLUGINS_ENV, LOAD_PLUGINS_ENV

    env = {**os.environ, LOAD_PLUGINS_ENV: ",".join(names)}
    env.pop(DISABLE_PLUGINS_ENV, None)
    done = subprocess.run(
        [sys.executable, "-m", "retro_platform.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise PipError(f"the installed plugins could not be listed: {done.stderr.strip()}")
    return [plugin for plugin in json.loads(done.stdout) if plugin["name"] in names]
