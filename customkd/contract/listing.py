"""The dataset-listing contract: which image each store row is, and whether it is still that image.

Rows are the dataset listing's samples in order (labeled samples sorted by relative path, then each
``unlabeled:NAME=PATH`` part's images). A row's :func:`sample_key` hashes its relative path and its
:func:`content_hash` the bytes read at extraction; :func:`listing_hash` goes into the fingerprint's
dataset component. :func:`compare_listing` is the one staleness check, used by ``cache verify`` and by
the trainer before it reads images. Light like :mod:`contract.schema`: NumPy and the standard library.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from customkd.contract.schema import ARRAYS, LISTING_ARRAYS, Manifest


def sample_key(relpath: str) -> int:
    """uint64 key of a sample's relative path (row ↔ image check)."""
    return int.from_bytes(hashlib.blake2b(relpath.encode(), digest_size=8).digest(), "little")


def content_hash(data: bytes) -> int:
    """uint64 hash of a sample's bytes (staleness check)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class ListedSample(Protocol):
    relpath: str
    label: int
    domain: int
    split: int
    size: int


class Listing(Protocol):
    """What the contract needs of a dataset listing (:class:`contract.datasets.DatasetListing`)."""

    samples: Sequence[ListedSample]
    classes: tuple[str, ...]
    domains: tuple[str, ...]

    def __len__(self) -> int: ...
    def read_bytes(self, index: int) -> bytes: ...


def listing_hash(samples: Sequence[ListedSample], classes: Sequence[str], domains: Sequence[str]) -> str:
    """Hash of the rows' relative paths, sizes, labels, domains and splits, and the names (fingerprint dataset)."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.relpath}\t{s.size}\t{s.label}\t{s.domain}\t{s.split}\n".encode())
    h.update(("|".join(classes) + "#" + "|".join(domains)).encode())
    return h.hexdigest()


_SAMPLE_FIELD = {"labels": "label", "domain": "domain", "split": "split"}  # array -> field of a listed sample


def listing_arrays(listing: Listing) -> dict[str, np.ndarray]:
    """The :data:`LISTING_ARRAYS` of a dataset listing, as a store holds them."""
    columns = {name: [getattr(s, field_) for s in listing.samples] for name, field_ in _SAMPLE_FIELD.items()}
    columns["sample_key"] = [sample_key(s.relpath) for s in listing.samples]
    return {name: np.array(columns[name], dtype=ARRAYS[name].dtype) for name in LISTING_ARRAYS}


@dataclass(frozen=True)
class ListingDiff:
    """How a dataset listing differs from what a store recorded about it; rows are store rows."""

    listing_rows: int
    stored_rows: int
    names: tuple[str, ...] = ()  # class or domain names that differ, one line each
    relabeled: tuple[str, ...] = ()  # labels / domain / split rows that differ, one line per array
    moved: tuple[tuple[int, str], ...] = ()  # (row, relative path now): the row means another image
    changed: tuple[tuple[int, str], ...] = ()  # (row, relative path): a valid row whose bytes changed
    unreadable: tuple[tuple[int, str, str], ...] = ()  # (row, relative path, error): cannot be read now
    listing_hash_differs: bool = False  # file sizes, labels or splits differ from the fingerprint's

    @property
    def count_differs(self) -> bool:
        return self.listing_rows != self.stored_rows

    @property
    def stale(self) -> list[tuple[int, str]]:
        """Valid rows whose image is not the one extracted (changed or unreadable), in row order."""
        return sorted([*self.changed, *((row, relpath) for row, relpath, _ in self.unreadable)])

    def problems(self) -> list[str]:
        """Every difference, one line each (``cache verify``)."""
        if self.count_differs:
            return [f"dataset has {self.listing_rows} samples, store has {self.stored_rows} (images added or removed)"]
        per_row = {row: f"sample {row}: path {relpath} does not match the store's row" for row, relpath in self.moved}
        per_row |= {row: f"sample {row}: {relpath} changed since extraction (content hash differs)"
                    for row, relpath in self.changed}
        per_row |= {row: f"sample {row}: {relpath} cannot be read ({error})" for row, relpath, error in self.unreadable}
        return [*self.names, *self.relabeled, *(per_row[row] for row in sorted(per_row))]


def compare_listing(listing: Listing, manifest: Manifest,
                    stored: Mapping[str, np.ndarray] | None = None) -> ListingDiff:
    """The one staleness check: a dataset listing against a store's names and per-row arrays.

    ``stored`` holds the store's :data:`STALENESS_ARRAYS`; without it (or when the row counts differ) only the
    counts and names are compared, so nothing of size N is read. The bytes of every valid row whose path still
    matches are hashed again."""
    names = tuple(f"the store's {key} differ from the dataset's ({len(ours)} vs {len(theirs)} names)"
                  for key, ours, theirs in (("classes", manifest.classes, listing.classes),
                                            ("domains", manifest.domains, listing.domains))
                  if tuple(theirs) != ours)
    diff = ListingDiff(len(listing), manifest.n_samples, names)
    if stored is None or diff.count_differs:
        return diff
    expected = {name: [getattr(s, _SAMPLE_FIELD[name]) for s in listing.samples] for name in _SAMPLE_FIELD}
    relabeled = []
    for name in _SAMPLE_FIELD:
        values = stored[name]
        differ = np.flatnonzero(np.asarray(expected[name], dtype=np.int64) != np.asarray(values, dtype=np.int64))
        if len(differ):
            first = int(differ[0])
            relabeled.append(f"array {name} differs from the dataset listing in {len(differ)} row(s), e.g. row {first} "
                             f"({listing.samples[first].relpath}: stored {int(values[first])}, dataset "
                             f"{expected[name][first]})")
    moved, changed, unreadable = [], [], []
    valid = np.asarray(stored["valid"]).astype(bool)
    for row, sample in enumerate(listing.samples):
        if sample_key(sample.relpath) != stored["sample_key"][row]:
            moved.append((row, sample.relpath))
        elif valid[row]:
            try:
                if content_hash(listing.read_bytes(row)) != stored["content_hash"][row]:
                    changed.append((row, sample.relpath))
            except OSError as exc:
                unreadable.append((row, sample.relpath, type(exc).__name__))
    now = listing_hash(listing.samples, listing.classes, listing.domains)
    return replace(diff, relabeled=tuple(relabeled), moved=tuple(moved), changed=tuple(changed),
                   unreadable=tuple(unreadable), listing_hash_differs=now != manifest.fingerprint.dataset.listing_hash)
