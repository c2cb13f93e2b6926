"""Command-line options derived from the settings' own declarations, never typed twice.

edge-eval takes every engine setting (`EngineConfig`'s fields and their `Setting`s); edge-calibrate
takes the station file's calibration recipe (`CalibrationConfig`'s fields, whose engine settings
are themselves derived from `EngineConfig`); each bridge takes its section of the station file
(`bridges.<name>`, sub-sections such as its CURVE keys included). A new setting appears in a CLI
without an edit here.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from pydantic import BaseModel

from edge.engine.config import DEFAULTS, SETTINGS, EngineConfig, backbone_name

CLI_TYPES = {"int": int, "float": float, "str": str}
COMPOSITE = ("geometry",)  # set through each CLI's own geometry options
# why a flag's value is read with more than its plain type
VALUE_TYPES = {"backbone": backbone_name}


@dataclass(frozen=True)
class Flag:
    """Marks a settings field whose option is not --field-name (an option users already type)."""

    option: str


def flag_of(name: str) -> str:
    """The option that sets `name`: the setting's own flag, else --name-with-dashes."""
    meaning = SETTINGS.get(name)
    return (meaning.flag if meaning and meaning.flag else "") or "--" + name.replace("_", "-")


def _help(text: str, default: Any) -> str:
    shown = "" if default is None else f" (default {default})"
    return (text + shown).replace("%", "%%")  # argparse formats help with %


def engine_names() -> list[str]:
    return [f.name for f in fields(EngineConfig) if f.name not in COMPOSITE]


def add_engine_options(parser: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """An option per engine setting (all but the geometry unless `names`), defaults the engine's."""
    types_of = {f.name: f.type for f in fields(EngineConfig)}
    for name in names or engine_names():
        meaning, default = SETTINGS[name], getattr(DEFAULTS, name)
        if types_of[name] == "bool":  # a flag that turns the default off (or on)
            action, state = ("store_false", "off") if default else ("store_true", "on")
            text = _help(f"{state}: {meaning.help}", None)
            parser.add_argument(flag_of(name), dest=name, action=action, help=text)
            continue
        parser.add_argument(
            flag_of(name),
            dest=name,
            type=VALUE_TYPES.get(name, CLI_TYPES[str(types_of[name])]),
            choices=meaning.choices or None,
            default=default,
            help=_help(meaning.help, default),
        )


def engine_settings(args: argparse.Namespace, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The engine settings `add_engine_options` read, as EngineConfig's keyword arguments."""
    return {name: getattr(args, name) for name in names or engine_names()}


def _plain(annotation: Any) -> tuple[Any, tuple[Any, ...], bool]:
    """The value type of a pydantic field's annotation, its Literal choices, if any, and whether
    it is a list (then the type and choices are its items')."""
    listed = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated or origin is list:
            listed |= origin is list
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin is typing.Literal:
            choices = typing.get_args(annotation)
            return type(choices[0]), choices, listed
        else:
            return annotation, (), listed


def option_of(name: str, info: Any) -> str:
    """The option that sets field `name` of a section: its `Flag`, else the usual one."""
    marker = next((m for m in info.metadata if isinstance(m, Flag)), None)
    return marker.option if marker else flag_of(name)


def add_model_options(parser: Any, model: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """An option per field of a settings section and of its sub-sections (default None: the
    station file's value stands, whose default the help shows); a list field's option repeats.
    Returns each field's dotted path → its option, for messages that name the option."""
    options: dict[str, str] = {}
    for name, info in model.model_fields.items():
        kind, choices, listed = _plain(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            options |= add_model_options(parser, kind, f"{prefix}{name}.")
            continue
        option, dest = option_of(name, info), prefix + name
        options[dest] = option
        shown = None if kind is bool or info.is_required() else info.default
        text = _help(info.description or "", shown) + (" (required)" if info.is_required() else "")
        if kind is bool:
            parser.add_argument(option, dest=dest, action="store_true", default=None, help=text)
            continue
        parser.add_argument(
            option,
            dest=dest,
            type=VALUE_TYPES.get(name, kind),
            choices=choices or None,
            action="append" if listed else "store",
            metavar=None if choices else option.lstrip("-").upper().replace("-", "_"),
            help=text,
        )
    return options


def model_settings(args: argparse.Namespace, model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """The options `add_model_options` read that were given, as the section's (nested) keys."""
    given: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind, _, _ = _plain(info.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            value = model_settings(args, kind, f"{prefix}{name}.") or None
        else:
            value = getattr(args, prefix + name)
        if value is not None:
            given[name] = value
    return given
