"""Command-line flags made from the fields of a pydantic settings class: one flag per field.

Kept apart from :mod:`attnserve_server.settings` (which calls :func:`add_field_flags` with its own
class) so that the settings module holds the settings themselves.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo


def flag(name: str) -> str:
    """``--model-repository`` for the field ``model_repository``."""
    return "--" + name.replace("_", "-")


def _help(name: str, description: str | None, default: Any, env_prefix: str) -> str:
    shown = "none" if default is None else default
    # argparse %-formats help strings.
    return f"{description} [env {env_prefix}{name.upper()}; default: {shown}]".replace("%", "%%")


def boolean(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off), as in ``--exit-on-error=false``."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_field_flags(
    parser: argparse.ArgumentParser,
    fields: Mapping[str, FieldInfo],
    *,
    env_prefix: str,
    choices: Mapping[str, tuple[list[str], Callable[[str], Any]]] | None = None,
) -> None:
    """One flag per field; an absent flag leaves the value of the other sources (file, environment, default).

    ``choices`` names fields whose flag takes a fixed list of values, with the function that
    normalises what was typed (``str.upper`` for ``--log-level debug``).
    """
    for name, field in fields.items():
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,  # an absent flag must not hide the environment or the file
            "help": _help(name, field.description, field.default, env_prefix),
            "dest": name,
        }
        annotation = field.annotation
        if choices and name in choices:
            kwargs["choices"], kwargs["type"] = choices[name]
        elif typing.get_origin(annotation) is Literal:
            kwargs["choices"] = list(typing.get_args(annotation))
        elif annotation is bool or annotation == bool | None:
            # Both spellings work: --exit-on-error=false (as Triton writes it) and --no-exit-on-error.
            kwargs.update(nargs="?", const=True, type=boolean, metavar="{true,false}")
            parser.add_argument(flag(name), **kwargs)
            parser.add_argument(
                "--no-" + name.replace("_", "-"),
                dest=name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=f"Same as {flag(name)}=false.",
            )
            continue
        elif annotation == tuple[str, ...]:
            kwargs["action"] = "append"
        elif annotation in (int, float, Path):
            kwargs["type"] = annotation
        elif Path in typing.get_args(annotation):  # Path | None
            kwargs["type"] = Path
        parser.add_argument(flag(name), **kwargs)
