"""What the values of a complete store may be, checked without the dataset: one block of rows (or one flag) of one
array at a time (:func:`block_problem`) and the count the manifest records (:func:`count_problem`).

A store is someone else's file: a ``valid`` of 2 reads as true, a label of 99 indexes past the classifier, a split
of 5 is no split at all. ``cache verify`` reports these, ``distill``, ``cache export`` and ``cache import`` refuse
them; the rows against the dataset listing are :mod:`contract.listing`'s to compare.
"""

from __future__ import annotations

import numpy as np

from customkd.contract.schema import UNLABELED, Manifest
from customkd.contract.views import view_problem

# extraction leaves an invalid sample's features NaN; finite ones there were written by someone else
INVALID_WITH_FEATURES = "has features for samples stored invalid (skipped at extraction, their features are NaN)"


def value_range(name: str, manifest: Manifest) -> tuple[int, int, str] | None:
    """Fewest and most (inclusive) of the integers :data:`contract.schema.ARRAYS` entry ``name`` may hold and what
    they mean, or None where any value is legal (hashes) or the array is not integer (features, views)."""
    return {
        "labels": (UNLABELED, len(manifest.classes) - 1, f"a class index of {len(manifest.classes)} or -1"),
        "domain": (0, len(manifest.domains) - 1, f"a domain id of {len(manifest.domains)}"),
        "split": (0, len(manifest.splits) - 1, f"a split id of {len(manifest.splits)}"),
        "valid": (0, 1, "0 or 1"),
        "done": (0, 1, "0 or 1"),
        "teacher_done": (0, 1, "0 or 1"),
    }.get(name)


def _range_problem(name: str, block: np.ndarray, rows: slice | int, manifest: Manifest, place: str) -> str | None:
    bounds = value_range(name, manifest)
    if bounds is None:
        return None
    low, high, words = bounds
    bad = np.flatnonzero((block < low) | (block > high))
    if not len(bad):
        return None
    where = f"row {rows.start + bad[0]} holds" if isinstance(rows, slice) else "holds"
    more = f" ({len(bad)} rows in all)" if len(bad) > 1 else ""
    return f"{place}: {where} {int(block[bad[0]])}, not {words} ({low}..{high}){more}"


def block_problem(name: str, block: np.ndarray, valid: np.ndarray | None, rows: slice | int, manifest: Manifest,
                  place: str) -> str | None:
    """What is wrong with one block of array ``name`` (its :data:`contract.schema.ARRAYS` entry) at ``place``, or
    None. ``rows`` is the block's slice of rows, or for a per-shard flag its shard; ``valid`` ``[n]`` the rows'
    validity (None for a flag). Integers must be in :func:`value_range`; a valid sample's features finite and an
    invalid one's all NaN (extraction never wrote them); views drawable by the recipe (:func:`view_problem`)."""
    block = np.atleast_1d(block)
    problem = _range_problem(name, block, rows, manifest, place)
    if problem:
        return problem
    if name == "features" and not np.isfinite(block[valid]).all():
        kind = "NaN (unwritten)" if np.isnan(block[valid]).any() else "inf (float16 overflow)"
        return f"{place} has {kind} features for valid samples"
    if name == "features" and not np.isnan(block[~valid]).all():
        return f"{place} {INVALID_WITH_FEATURES}"
    if name == "views" and np.isnan(block[valid]).any():
        return f"{place} has NaN view parameters for valid samples"
    if name == "views":
        return view_problem(block, valid, manifest.fingerprint.augmentation.recipe, rows.start)
    if valid is None and not block.all():
        return f"{place} is not done"
    return None


def count_problem(valid: np.ndarray, manifest: Manifest) -> str | None:
    """The manifest's ``n_invalid`` against the rows the ``valid`` array ``[N]`` stores as invalid, or None."""
    found = int((np.asarray(valid) == 0).sum())
    if manifest.n_invalid is not None and manifest.n_invalid != found:
        return (f"the manifest records {manifest.n_invalid} invalid samples ('n_invalid'), array valid holds "
                f"{found}")
    return None
