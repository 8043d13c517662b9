"""Typed configs: each query policy and loss owns a small frozen dataclass of its hyperparameters.

A field says in one place its default, the command-line flag that sets it and that
flag's help (``setting``); the class's ``__post_init__`` refuses a value it cannot
work with, in one line. Code builds a policy or loss from such a config, never from
parsed flags, so a library user needs no argparse; only the trainer's CLI maps flags
to configs (``student_trainer.flags``).
"""
from __future__ import annotations

import dataclasses
from typing import Any

FLAG, HELP, CHOICES, METAVAR = "flag", "help", "choices", "metavar"


def setting(default: Any, help: str = "", *, flag: str | None = None, choices: tuple | None = None,
            metavar: str | None = None) -> Any:
    """A config field. ``flag``: the trainer flag of its own that sets it (``--kd-weight``); None: the
    field is one of the run's general flags of the same name (``batch_size`` is ``--batch-size``), which
    the CLI defines itself."""
    return dataclasses.field(default=default, metadata={FLAG: flag, HELP: help, CHOICES: choices, METAVAR: metavar})


def own_flag(field: dataclasses.Field) -> str | None:
    """The flag that sets ``field`` and belongs to its config class alone (None: a general flag)."""
    return field.metadata.get(FLAG)


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """The config of a part that takes no hyperparameters."""
