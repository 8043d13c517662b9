"""Proof, before training, that a teacher that renders view recipes holds this run's very data.

A recipe names an image by its place in the split, so a teacher whose copy of
the split differs would answer for other images. The split's fingerprints must
agree; where they do not and the split is a folder, the line names what differs:
the first file (found with about log2(N) range digests of the teacher's content
manifest, ``common.manifest.first_difference``), or the way views are made.
"""
from __future__ import annotations

import json

from student_trainer.teachers.base import TeacherClient


def check_teacher_renders(teacher: TeacherClient, spec, items) -> None:
    """``--send recipes``: the views must be recipes and the teacher must render them from this very split
    (same fingerprint), or the answers are for other images: refuse up front, never fall back to pixels."""
    if not teacher.takes_recipes:
        return
    if items.recipes is None:
        raise ValueError(f"--send recipes needs views drawn as recipes (--augment-draws batched), but "
                         f"{items.why_not_recipes}: use --send pixels")
    info, ours = teacher.describe(), items.recipes.fingerprint
    if info.data is None:
        raise ValueError(f"--send recipes: teacher {info.model_name} holds no data set to render recipes from; "
                         f"start it with --dataset {spec.name} (and this run's data flags), or use --send pixels")
    if info.data.fingerprint == ours:
        return
    what = _what_differs(teacher, info.data, items.recipes)
    if what:
        raise ValueError(f"--send recipes: teacher {info.model_name}'s copy of the data is not this run's: {what}; "
                         "give both sides the same files and data flags, or use --send pixels")
    raise ValueError(f"--send recipes: teacher {info.model_name} renders from {info.data.name} "
                     f"({info.data.size} images, fingerprint {info.data.fingerprint[:12]}), but this run "
                     f"trains on {spec.name} (fingerprint {ours[:12]}): start the teacher with this run's "
                     f"--dataset and data flags, or use --send pixels")


def _what_differs(teacher: TeacherClient, served, source) -> str | None:
    """The first differing file, or the view settings that differ, of two copies of a folder (None where
    either side's split is not a folder)."""
    from common.manifest import first_difference

    manifest = source.manifest
    if manifest is None or not served.files_fingerprint:
        return None
    if served.files_fingerprint != manifest.fingerprint:
        remote = teacher.served_manifest()
        found = first_difference(manifest, remote.range_digest, remote.entry) if remote else None
        return found or f"its files' fingerprint is {served.files_fingerprint[:12]}, this run's {manifest.fingerprint[:12]}"
    theirs, mine = json.loads(served.view_settings or "{}"), source.view_settings()
    differ = [f"{key} {theirs.get(key)} there, {mine.get(key)} here" for key in sorted(set(theirs) | set(mine))
              if theirs.get(key) != mine.get(key)]
    return "the same files, but views made differently: " + "; ".join(differ) if differ else None
