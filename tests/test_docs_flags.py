"""The flag tables of docs/training.md and docs/serving.md against the real parsers, built in-process.

A flag table is a markdown table (outside code fences) whose header row's first cell is ``flag``;
every ``--flag`` in the first cell of its rows counts as documented. Both directions are checked:
every flag the page's parser accepts (all but -h/--help and hidden, argparse.SUPPRESS, ones) is in
its tables, and every flag in its tables is one the parser shows in --help. Where a row names one
flag, its ``default`` cell is checked where it is machine-readable: a single code span (`64`,
`float16`) is the parser's default, read with the flag's own type; ``off`` is a switch (default
False); a blank cell is no default (None). A default in other words (``the teacher's``) is not checked.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from student_trainer.cli import build_parser as trainer_parser
from teacher_server.cli import build_parser as server_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"docs/training.md": trainer_parser, "docs/serving.md": server_parser}
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
CODE_SPAN = re.compile(r"^`([^`]+)`$")
SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


@dataclass(frozen=True)
class Row:
    flags: tuple[str, ...]
    default: str | None   # the default cell's text; None where the table has no default column
    line: int


def _cells(line: str) -> list[str]:
    """A table row's cells; ``\\|`` inside a cell is not a separator."""
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    return [c.strip() for c in re.split(r"(?<!\\)\|", body)]


def flag_rows(text: str) -> list[Row]:
    """The rows of every flag table in a markdown page."""
    lines, rows, fenced, i = text.splitlines(), [], False, 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif (not fenced and line.lstrip().startswith("|") and i + 1 < len(lines)
              and SEPARATOR.match(lines[i + 1].strip())):
            header = [c.lower() for c in _cells(line)]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                if header[0] == "flag":
                    cells = _cells(lines[i])
                    default = cells[header.index("default")] if "default" in header else None
                    rows.append(Row(tuple(FLAG.findall(cells[0])), default, i + 1))
                i += 1
            continue
        i += 1
    return rows


def public_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every long flag the parser shows in --help, with its action."""
    return {option: action for action in parser._actions
            if action.help is not argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)
            for option in action.option_strings if option.startswith("--")}


def documented(page: str) -> set[str]:
    return {flag for row in flag_rows((ROOT / page).read_text()) for flag in row.flags}


@pytest.mark.parametrize("page", PAGES)
def test_every_flag_of_the_parser_is_in_the_pages_flag_tables(page):
    missing = sorted(set(public_flags(PAGES[page]())) - documented(page))
    assert not missing, f"{page} has no flag-table row for {', '.join(missing)}"


@pytest.mark.parametrize("page", PAGES)
def test_every_flag_in_the_pages_flag_tables_is_one_the_parser_shows(page):
    unknown = sorted(documented(page) - set(public_flags(PAGES[page]())))
    assert not unknown, f"{page} documents {', '.join(unknown)}, which the parser does not show in --help"


def default_mismatch(cell: str, action: argparse.Action) -> str | None:
    """Why a documented default cell disagrees with the parser; None where it agrees or says it in words."""
    literal = CODE_SPAN.match(cell)
    if literal:
        value = action.type(literal.group(1)) if callable(action.type) else literal.group(1)
        return None if value == action.default else f"the docs say {literal.group(1)}, the parser {action.default!r}"
    if cell == "off":
        return None if action.nargs == 0 and action.default is False else f"not a switch off by default " \
                                                                            f"({action.default!r})"
    if cell == "":
        return None if action.default is None else f"the docs give none, the parser {action.default!r}"
    return None


@pytest.mark.parametrize("page", PAGES)
def test_each_machine_readable_default_is_the_parsers(page):
    actions, wrong, checked = public_flags(PAGES[page]()), [], 0
    for row in flag_rows((ROOT / page).read_text()):
        if len(row.flags) != 1 or row.default is None or row.flags[0] not in actions:
            continue
        checked += bool(CODE_SPAN.match(row.default))
        why = default_mismatch(row.default, actions[row.flags[0]])
        if why:
            wrong.append(f"{page}:{row.line} {row.flags[0]}: {why}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 10, f"{page}: only {checked} defaults in backticks read from its flag tables"


def test_a_flag_added_without_docs_is_caught():
    parser = trainer_parser()
    parser.add_argument("--not-in-the-docs", type=int, default=3)
    assert set(public_flags(parser)) - documented("docs/training.md") == {"--not-in-the-docs"}


def test_flag_tables_are_read_by_their_header_outside_code_fences():
    text = "\n".join([
        "| flag | default | meaning |", "|---|---|---|",
        "| `--a` | `1` | one |", "| `--b --c` | | two, `--not-this` |", "| `--d` | off | q(t\\|s) |",
        "", "| field | meaning |", "|---|---|", "| `--e` | not a flag table |",
        "```", "| flag | default |", "|---|---|", "| `--f` | `2` |", "```",
    ])
    rows = flag_rows(text)
    assert [r.flags for r in rows] == [("--a",), ("--b", "--c"), ("--d",)]
    assert [r.default for r in rows] == ["`1`", "", "off"]
