"""An experiment's TOML config: loaded and checked, ``[quick]`` applied, options turned into trainer flags."""
from __future__ import annotations

import statistics
import tomllib

# Group keys the runner reads itself; every other key of a group is a trainer option.
RUNNER_KEYS = ("name", "seeds", "series", "match_compute", "answer_store")
STORE_MODES = (None, "own", "shared")


def load_config(path: str, quick: bool = False) -> dict:
    with open(path, "rb") as f:
        config = tomllib.load(f)
    for key in ("name", "teacher", "student", "groups"):
        if key not in config:
            raise ValueError(f"{path}: the config needs a '{key}' entry")
    if quick:
        apply_quick(config)
    return config


def apply_quick(config: dict) -> None:
    """The config's ``[quick]`` overrides, in place: a smoke check that never writes over the full run."""
    overrides = config.get("quick", {})
    if "out" in config["teacher"] and "out" not in overrides.get("teacher", {}):
        # never let a quick teacher land in (and later be reused as) the full one's folder
        config["teacher"]["out"] += "-quick"
    for section in ("teacher", "student"):
        config[section] = {**config[section], **overrides.get(section, {})}
    if "seeds" in overrides:
        for group in config["groups"]:
            group["seeds"] = group.get("seeds", [0])[: overrides["seeds"]]
    config["out"] = overrides.get("out", config.get("out", "runs/experiment") + "-quick")
    config["results"] = overrides.get("results", config.get("results", config["out"]))


def to_flags(options: dict) -> list[str]:
    """{'batch_size': 64, 'milestones': [5, 8], 'no_augment': True} -> trainer flags."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


def group_options(group: dict, finished: dict[str, list[dict]]) -> dict:
    """The group's trainer options; ``match_compute = G`` becomes ``--budget`` = G's measured compute vs KD."""
    options = {k: v for k, v in group.items() if k not in RUNNER_KEYS}
    target = group.get("match_compute")
    if target:
        if target not in finished:
            raise ValueError(f"group {group['name']}: match_compute names {target!r}, which must come before it")
        options["budget"] = round(statistics.fmean(s["compute_vs_kd"] for s in finished[target]), 4)
    return options


def store_mode(group: dict) -> str | None:
    """``answer_store``: None (no store), "own" (each run its own, empty) or "shared" (one for the group's seeds,
    trained one after another, as a sweep would)."""
    mode = group.get("answer_store")
    if mode not in STORE_MODES:
        raise ValueError(f"group {group['name']}: answer_store is 'own' or 'shared', not {mode!r}")
    return mode
