"""Image folders: listing root/<folder>/<image>, classes from folder names by a pattern, curation by
class size (of the files a check finds readable), and a seeded stratified train/val/test split."""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
LAYOUT = "root/<class folder>/<image>, e.g. root/honda_civic_2004/0001.jpg"
LISTED_ERRORS = 5  # unreadable files named in a message


def list_folders(root: Path) -> dict[str, list[str]]:
    """Sorted image paths of every sub-folder of `root` (hidden files and other suffixes ignored)."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} not found; expected the layout {LAYOUT}")
    folders = {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_dir() and not entry.name.startswith("."):
            folders[entry.name] = sorted(
                f.path
                for f in os.scandir(entry.path)
                if f.is_file() and not f.name.startswith(".") and Path(f.name).suffix.lower() in IMAGE_SUFFIXES
            )
    if not any(folders.values()):
        raise FileNotFoundError(f"no images under {root}; expected the layout {LAYOUT}")
    return folders


def group_folders(folders: list[str], class_pattern: str, class_group: str) -> tuple[dict[str, list[str]], list[str]]:
    """Folders of each class, the class named by `class_group` formatted with the groups of a full
    match of `class_pattern` ({0}, {name}; {folder}: the whole name); unmatched folders listed apart."""
    regex = re.compile(class_pattern)
    classes: dict[str, list[str]] = {}
    unmatched = []
    for folder in folders:
        match = regex.fullmatch(folder)
        if match is None:
            unmatched.append(folder)
            continue
        try:
            name = class_group.format(*match.groups(), folder=folder, **match.groupdict())
        except (IndexError, KeyError) as error:
            raise ValueError(f"class_group {class_group!r} names a group {error} that class_pattern "
                             f"{class_pattern!r} lacks") from error
        classes.setdefault(name, []).append(folder)
    return classes, unmatched


def curate(counts: dict[str, int], top_k: int | None, min_images: int) -> tuple[list[str], dict[str, int]]:
    """Kept classes (sorted by name): those with at least `min_images` images, then the `top_k`
    largest of them (ties by name); and the dropped classes with their counts."""
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    kept = set([c for c in ranked if counts[c] >= min_images][:top_k])
    return sorted(kept), {c: counts[c] for c in ranked if c not in kept}


def split_counts(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_val, n_test) of a class of n: rounded fractions, at least one each when the class has
    room for train, val and test, train never emptied."""
    n_test = min(max(1, round(test * n)) if test > 0 else 0, max(n - 1, 0))
    n_val = min(max(1, round(val * n)) if val > 0 else 0, max(n - 1 - n_test, 0))
    return n_val, n_test


def stratified_split(labels: Tensor, class_names: list[str], val: float, test: float, seed: int) -> dict[str, Tensor]:
    """Sorted example indices of train/val/test: each class's examples permuted by a generator seeded
    from (`seed`, class name), so a class's split doesn't depend on which other classes are kept."""
    if val < 0 or test < 0 or val + test >= 1:
        raise ValueError(f"split fractions val={val}, test={test}: each must be >= 0 and their sum < 1")
    parts: dict[str, list[Tensor]] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(class_names):
        members = (labels == label).nonzero().squeeze(1)
        generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
        members = members[torch.randperm(len(members), generator=generator)]
        n_val, n_test = split_counts(len(members), val, test)
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {key: torch.cat(chunks).sort().values for key, chunks in parts.items()}


def judge(errors: Mapping[str, str], on_corrupt: str) -> None:
    """Log unreadable files, or raise when `on_corrupt` is "error"."""
    if not errors:
        return
    listing = "; ".join(f"{path}: {error}" for path, error in list(errors.items())[:LISTED_ERRORS])
    more = f" and {len(errors) - LISTED_ERRORS} more" if len(errors) > LISTED_ERRORS else ""
    if on_corrupt == "error":
        raise OSError(f"{len(errors)} unreadable image(s) (on_corrupt=error): {listing}{more}; remove or replace "
                      f"them, or set on_corrupt=skip to train without them")
    log.warning("skipped %d unreadable image(s), e.g. %s", len(errors), listing)


@dataclass
class Curated:
    """The kept classes' readable images (sorted by class, then path) with labels, and what was left out."""

    classes: list[str]
    paths: list[str]
    labels: Tensor
    dropped: dict[str, int]
    unmatched: list[str]
    unreadable: dict[str, str]


def curated_images(
    root: Path, class_pattern: str, class_group: str, top_k: int | None, min_images: int, on_corrupt: str,
    unreadable_of: Callable[[list[str]], dict[str, str]],
) -> Curated:
    """List and group the images under `root`, find the unreadable ones with `unreadable_of` (paths -> their
    errors), judge them by `on_corrupt`, then keep the classes `curate` keeps of the readable ones."""
    folders = list_folders(root)
    groups, unmatched = group_folders(list(folders), class_pattern, class_group)
    if unmatched:
        log.warning("%s: %d folder(s) match no class pattern, ignored: %s", root, len(unmatched), unmatched[:10])
    listed = {c: sorted(p for f in fs for p in folders[f]) for c, fs in groups.items()}
    unreadable = unreadable_of([p for paths in listed.values() for p in paths])
    judge(unreadable, on_corrupt)
    readable = {c: [p for p in paths if p not in unreadable] for c, paths in listed.items()}
    classes, dropped = curate({c: len(paths) for c, paths in readable.items()}, top_k, min_images)
    if not classes:
        raise ValueError(f"no class of {root} has >= {min_images} readable images")
    if dropped:
        log.info("%s: kept %d classes, dropped %d: %s", root, len(classes), len(dropped), dropped)
    labels = torch.tensor([k for k, c in enumerate(classes) for _ in readable[c]], dtype=torch.long)
    return Curated(classes, [p for c in classes for p in readable[c]], labels, dropped, unmatched, unreadable)
