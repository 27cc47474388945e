"""``retro-platform plugin``: start a new plugin package."""

from __future__ import annotations

from pathlib import Path

import click

from retro_platform.cli.group import cli
from retro_platform.cli.plugin_template import KINDS


@cli.group()
def plugin() -> None:
    """Start a plugin of your own: a package to pip install, with its tests."""


@plugin.command()
@click.argument("name")
@click.option("--kind", type=click.Choice(list(KINDS)), required=True, help="What it plugs in.")
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to write the package's folder.",
)
def new(name: str, kind: str, directory: Path) -> None:
    """Write retro-platform-NAME/: pyproject.toml (with the entry point), README.md, a small
    working module to change, and tests that run the conformance kit (retro_platform.testing)
    against it.

    NAME is what experiment files select it by: lowercase letters, digits and '-'.
    """
    from retro_platform.cli.plugin_template import write

    _refuse_a_taken_name(name, kind)
    root = write(name, kind, directory)
    shown = str(root) if root.is_absolute() else f"./{root}"  # pip reads "./x" as a path
    click.echo(f"wrote {shown}/")
    click.echo(f'next: pip install -e "{shown}[test]" && pytest {shown}')


#: The registry family of each kind of ``plugin new``.
_FAMILY = {
    "retriever": "retrievers",
    "embedder": "embedders",
    "tokenizer": "tokenizers",
    "corpus": "corpus_readers",
    "positional-encoding": "positional_encodings",
}


def _refuse_a_taken_name(name: str, kind: str) -> None:
    """A name that an installed plugin (a built-in above all) already registers for ``kind``
    would be shadowed: the plugin loaded first keeps it, so the new package would never be
    used and its own registered_as test would fail."""
    from retro_platform.errors import ConfigError
    from retro_platform.plugins import FAMILIES, get_registry

    family = _FAMILY[kind]
    taken = get_registry(family).get(name)
    if taken is not None:
        raise ConfigError(
            f"{FAMILIES[family]} {name!r} is already registered by plugin {taken.plugin!r} "
            f"({taken.distribution}); a new plugin of that name would be shadowed by it: "
            f"choose another name (e.g. my-{name})"
        )
