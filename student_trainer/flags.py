"""The CLI's side of typed configs: each config class's own flags in a parser, and parsed flags back into
configs. Only the CLI reads argparse; everything below it takes the config objects."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import TypeVar

from student_trainer.config import CHOICES, HELP, METAVAR, own_flag

S = TypeVar("S")


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_config_flags(group: argparse._ArgumentGroup, config_type: type, added: set[str]) -> None:
    """The flags of ``config_type``'s own fields (each once: ``added`` holds the flags already there)."""
    hints = typing.get_type_hints(config_type)
    for field in dataclasses.fields(config_type):
        flag = own_flag(field)
        if flag is None or flag in added:
            continue
        added.add(flag)
        kind = hints[field.name]
        options = {"default": field.default, "help": field.metadata.get(HELP) or None}
        if field.metadata.get(CHOICES):
            options["choices"] = field.metadata[CHOICES]
        if field.metadata.get(METAVAR):
            options["metavar"] = field.metadata[METAVAR]
        if kind in (int, float, str):
            options["type"] = kind
        group.add_argument(flag, **options)


def config_from_flags(config_type: type[S], args: argparse.Namespace) -> S:
    """``config_type`` from parsed flags: own fields from their flags, the others from the run's general
    flags of the same name. Its ``__post_init__`` refuses bad values in one line."""
    values = {}
    for field in dataclasses.fields(config_type):
        name = dest(own_flag(field)) if own_flag(field) else field.name
        if hasattr(args, name):
            values[field.name] = getattr(args, name)
    return config_type(**values)
