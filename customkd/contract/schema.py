"""The written contract between the two processes: what a feature store holds and what its manifest says.

``featcache`` (extract) writes stores and ``trainer`` (distill) reads them; this module is the only
place the store's shape is described, and it is light (NumPy and the standard library) so both sides
can import it. It holds

- :data:`ARRAYS`: every array of a store — shape, dtype, fill value, meaning;
- :class:`Layout`: how the arrays are cut into shards (the only :meth:`Layout.shard_rows`);
- the fingerprint: five components, each hashed on its own (:class:`Fingerprint`);
- :class:`Manifest`: the root attrs, typed. :meth:`Manifest.from_attrs` checks every key readers act
  on — a store is untrusted input — and :meth:`Manifest.to_attrs` gives back exactly the stored dict;
- the data-spec grammar (:func:`parse_data_spec`): which dataset a store was extracted from.

The rest of the dataset-listing contract — row keys and the one staleness check — is
:mod:`contract.listing`.

Rows are the dataset listing's samples in order: labeled samples sorted by relative path, then the
images of each ``unlabeled:NAME=PATH`` part (label -1, training split, domain NAME).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from customkd.contract.fingerprint import (
    Fingerprint,
    ManifestError,
    TeacherComponent,
    _checked_component,
    _frozen,
    _need,
    ensemble_component,
    with_hash,
)

# 2: every chunk is written, fill-valued ones too, so a missing chunk is damage (version 1 skipped them)
# 3: several teachers over one view set: a features array, done flags, fingerprint component and status per teacher
SCHEMA_VERSION = 3
READ_VERSIONS = (2, 3)  # version 2 (one teacher, arrays `features` and `done`) is read, never written
ATTRS_KEY = "customkd"  # the root attrs key that holds the manifest
STATUS_CREATING = "creating"  # arrays not all created yet: safe to delete and start over
STATUS_IN_PROGRESS = "in_progress"
STATUS_COMPLETE = "complete"
STATUSES = (STATUS_CREATING, STATUS_IN_PROGRESS, STATUS_COMPLETE)
UNLABELED = -1  # the label of an image nobody labeled
SPLITS = ("train", "test")  # the split names of every store, stored ids 0 and 1 of the ``split`` array
VIEW_PARAMS: tuple[str, ...] = (  # the ``views`` array's columns, in the order replay reads them
    "x0", "y0", "x1", "y1",  # crop box, normalised to the original image (0..1)
    "flip",  # 1.0 = horizontal flip
    "brightness", "contrast", "saturation", "hue",  # colour factors (1, 1, 1, 0 = unchanged)
)

# ---------------------------------------------------------------- the arrays


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store. ``dims`` names its shape: N samples, V views, D feature dimension,
    P view parameters (their names in the manifest's ``view_params``), n_shards shards."""

    dims: tuple[str, ...]
    dtype: str
    fill: float
    meaning: str
    per_teacher: bool = False  # one array per teacher of the store, stored as ``<name>_t<slot>``

    @property
    def shape_text(self) -> str:
        return f"({', '.join(self.dims)}{',' if len(self.dims) == 1 else ''})"


ARRAYS: dict[str, ArraySpec] = {
    "features": ArraySpec(("N", "V", "D"), "float16", math.nan, "one teacher's feature per view, one array per "
                          "teacher (`features_t0`, `features_t1`, …); unwritten rows read as NaN", per_teacher=True),
    "teacher_done": ArraySpec(("n_shards",), "uint8", 0, "one teacher's completion flag per shard (`teacher_done_t0`, "
                              "…), one storage object each", per_teacher=True),
    "views": ArraySpec(("N", "V", "P"), "float32", math.nan, "replay parameters per view (names in `view_params`)"),
    "labels": ArraySpec(("N",), "int32", 0, "class index; -1 for an unlabeled image"),
    "domain": ArraySpec(("N",), "int8", 0, "domain id (names in the manifest)"),
    "split": ArraySpec(("N",), "int16", 0, "split id: 0 train, 1 test (names in the manifest)"),
    "sample_key": ArraySpec(("N",), "uint64", 0, "hash of the sample's relative path (`sample_key`)"),
    "content_hash": ArraySpec(("N",), "uint64", 0, "hash of the image bytes read at extraction (`content_hash`)"),
    "valid": ArraySpec(("N",), "uint8", 1, "0 for an unreadable image skipped with `--skip-bad` (features stay NaN)"),
    "done": ArraySpec(("n_shards",), "uint8", 0, "the view set's completion flag per shard (views, content hashes, "
                      "validity), one storage object each"),
}
TEACHER_ARRAYS = tuple(name for name, spec in ARRAYS.items() if spec.per_teacher)
SHARED_ARRAYS = tuple(name for name, spec in ARRAYS.items() if not spec.per_teacher)
MAX_TEACHERS = 64
_STORED_NAME = re.compile(rf"(?P<array>{'|'.join(TEACHER_ARRAYS)})_t(?P<slot>0|[1-9][0-9]?)")


def stored_name(name: str, slot: int) -> str:
    """The Zarr array that holds array ``name`` (:data:`ARRAYS`) of the teacher in ``slot``."""
    return f"{name}_t{slot}" if ARRAYS[name].per_teacher else name


def spec_name(stored: str) -> str | None:
    """The :data:`ARRAYS` entry a stored array name belongs to (``features_t1`` → ``features``), or None."""
    if stored in SHARED_ARRAYS or stored in ("features",):  # ``features``: a version-2 store's only teacher
        return stored
    match = _STORED_NAME.fullmatch(stored)
    return match["array"] if match and int(match["slot"]) < MAX_TEACHERS else None
PER_SAMPLE_ARRAYS = {name: spec.dtype for name, spec in ARRAYS.items() if spec.dims == ("N",)}
LISTING_ARRAYS = ("labels", "domain", "split", "sample_key")  # written from the dataset listing at creation
VIEW_SET_ARRAYS = ("views", "content_hash", "valid")  # written shard by shard with the first teacher, then ``done``
STALENESS_ARRAYS = (*LISTING_ARRAYS, "content_hash", "valid")  # what compare_listing checks a listing against

# ---------------------------------------------------------------- the layout


@dataclass(frozen=True)
class Layout:
    """How the arrays are cut into shards and chunks (the ``layout`` fingerprint component)."""

    n_samples: int
    n_views: int
    feature_dim: int
    n_params: int
    shard_size: int = 256
    chunk_size: int = 16
    compress: bool = False

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_samples / self.shard_size)

    def shard_rows(self, shard: int) -> slice:
        """The rows of one shard (the last one may be short)."""
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples))

    def shard_of(self, rows):
        """The shard holding each row (an int, or an array of rows)."""
        return rows // self.shard_size

    def shard_span(self, shard: int) -> str:
        rows = self.shard_rows(shard)
        return f"rows {rows.start}-{rows.stop - 1}"

    def shape(self, name: str) -> tuple[int, ...]:
        sizes = {"N": self.n_samples, "V": self.n_views, "D": self.feature_dim, "P": self.n_params,
                 "n_shards": self.n_shards}
        return tuple(sizes[dim] for dim in ARRAYS[name].dims)

    def storage_block(self, name: str) -> tuple[int, ...]:
        """Shape of one storage object of an array: a whole shard of rows, or one ``done`` flag."""
        return (1,) if ARRAYS[name].dims == ("n_shards",) else (self.shard_size, *self.shape(name)[1:])

    def to_dict(self) -> dict:
        return {"shard_size": self.shard_size, "chunk_size": self.chunk_size, "compress": self.compress,
                "features_dtype": ARRAYS["features"].dtype, "checksums": "crc32c"}


def shard_size_for(n_samples: int, shard_size: int, chunk_size: int) -> int:
    """Samples per shard: ``shard_size``, or fewer for a small dataset, always a multiple of the inner chunk."""
    return min(shard_size, -(-n_samples // chunk_size) * chunk_size)


# ---------------------------------------------------------------- the fingerprint (contract.fingerprint)

def make_fingerprint(dataset: dict, teacher: dict | None, augmentation: dict, layout: dict) -> dict:
    """Fingerprint (stored form) with separate components, each carrying its own ``hash``; without ``teacher`` the
    store's own components (version 3 keeps each teacher's component beside its arrays)."""
    parts = {"dataset": dataset, "teacher": teacher, "augmentation": augmentation, "layout": layout,
             "schema": {"version": SCHEMA_VERSION}}
    return {name: with_hash(part) for name, part in parts.items() if part is not None}


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher of a store: its fingerprint component, feature dimension D, status and arrays.

    ``slot`` is its position in the manifest's ``teachers`` and names its arrays (:func:`stored_name`); the only
    teacher of a version-2 store (``legacy``) has the arrays ``features`` and ``done``."""

    name: str
    component: TeacherComponent
    feature_dim: int
    status: str
    slot: int
    completed: str | None = None
    legacy: bool = False

    def array(self, name: str) -> str:
        """The stored name of this teacher's array ``name`` (``features`` or ``teacher_done``)."""
        if self.legacy:
            return {"features": "features", "teacher_done": "done"}[name]
        return stored_name(name, self.slot)

    def to_dict(self) -> dict:
        entry = {"name": self.name, "feature_dim": self.feature_dim, "status": self.status,
                 "fingerprint": self.component.to_dict()}
        return {**entry, "completed": self.completed} if self.completed is not None else entry

    @classmethod
    def make(cls, component: Mapping, feature_dim: int, slot: int) -> TeacherEntry:
        """A new teacher (``in_progress``) from its component's body."""
        teacher = TeacherComponent.from_dict(with_hash(dict(component)))
        return cls(teacher.name, teacher, feature_dim, STATUS_IN_PROGRESS, slot)


def only_teachers(attrs: dict, names: tuple[str, ...]) -> dict:
    """Stored attrs (unchecked) with only the named teachers in ``teachers``; raises on a malformed list."""
    return {**attrs, "teachers": [t for t in attrs.get("teachers", []) if t.get("name") in names]}


def _check_teachers(attrs: Mapping, v: int) -> tuple[TeacherEntry, ...]:
    """A version-3 manifest's ``teachers``: a list of 1..MAX_TEACHERS objects, each with a unique name (no comma:
    ``A,B`` names an ensemble), D in range, a status and a fingerprint component matching its hash."""
    teachers = attrs.get("teachers")
    _need(isinstance(teachers, list) and 1 <= len(teachers) <= MAX_TEACHERS,
          f"'teachers' must be a list of 1 to {MAX_TEACHERS} teachers")
    entries = []
    for slot, item in enumerate(teachers):
        _need(isinstance(item, Mapping), f"teacher {slot} is not an object")
        name, d, status = item.get("name"), item.get("feature_dim"), item.get("status")
        _need(isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS and "," not in name,
              f"teacher {slot} has no name (a string without commas)")
        _need(_is_int(d, 1, MAX_FEATURE_DIM) and v * d <= MAX_FEATURES_PER_SAMPLE, f"teacher {name!r} feature_dim "
              f"{d!r} is out of range (1..{MAX_FEATURE_DIM}, V x D at most {MAX_FEATURES_PER_SAMPLE})")
        _need(status in STATUSES, f"teacher {name!r} status {status!r} is not one of {', '.join(STATUSES)}")
        _need(isinstance(item.get("completed", ""), str), f"teacher {name!r} 'completed' must be a string")
        part = _checked_component(f"teacher {name}", item.get("fingerprint"))
        component = TeacherComponent.from_dict(part)
        _need(component.name == name, f"teacher {name!r} has the fingerprint of teacher {component.name!r}")
        _need(component.body.get("feature_dim", d) == d, f"teacher {name!r} fingerprint feature_dim differs from "
              f"its feature_dim {d}")
        entries.append(TeacherEntry(name, component, d, status, slot, item.get("completed")))
    names = [entry.name for entry in entries]
    _need(len(set(names)) == len(names), "'teachers' names a teacher twice")
    return tuple(entries)


# ---------------------------------------------------------------- the manifest (a store is untrusted input)

# Bounds on what a manifest may claim, checked before anything is allocated from it.
MAX_SAMPLES = 10**9
MAX_VIEWS = 1024
MAX_FEATURE_DIM = 65536
MAX_SHARDS = 2**20
MAX_SHARD_ROWS = 2**20  # samples per shard or inner chunk (a reader holds a whole shard)
MAX_NAMES = 100_000
MAX_NAME_CHARS = 300  # a teacher, class, domain, split or view-parameter name (a folder name is at most 255 bytes)
MAX_TEXT_CHARS = 16384  # any other string of a manifest: a data spec or path of a few PATH_MAX (4096) parts, a time
MAX_FEATURES_PER_SAMPLE = 2**22  # V x D: 8 MiB of float16 per sample (e.g. 1024 views of 4096 dimensions)
MAX_BLOCK_BYTES = 2**31  # decoded bytes of one storage object, what a reader holds at once


class OtherSchemaVersion(ManifestError):
    """A store written in another format version (``found``: its ``schema_version``)."""

    def __init__(self, found: Any) -> None:
        super().__init__(f"store schema version {found!r}")
        self.found = found


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _names(attrs: Mapping, key: str) -> list[str]:
    names = attrs.get(key)
    _need(isinstance(names, list) and 1 <= len(names) <= MAX_NAMES and all(isinstance(n, str) for n in names),
          f"'{key}' must be a non-empty list of strings (at most {MAX_NAMES})")
    _need(len(set(names)) == len(names), f"'{key}' has duplicate names")
    return names


def _check_strings(attrs: Mapping) -> None:
    """Every string of the manifest, at any depth and keys included, is bounded before anything reads or prints it:
    names (:data:`MAX_NAME_CHARS`; teacher names in :func:`_check_teachers`) and the rest (:data:`MAX_TEXT_CHARS`:
    data spec, tap, times, versions, the extraction's config, keys this version does not know). The error says where
    and how long, never the string."""
    for key in ("classes", "domains", "splits", "view_params"):
        names = attrs.get(key)
        for i, name in enumerate(names if isinstance(names, list) else ()):
            _need(not isinstance(name, str) or len(name) <= MAX_NAME_CHARS, f"'{key}' entry {i} is {len(name)} "
                  f"characters long, more than the {MAX_NAME_CHARS} a name may have")
    pending: list[tuple[str, Any]] = []
    for key, value in attrs.items():
        _need(not isinstance(key, str) or len(key) <= MAX_NAME_CHARS, f"a key of the manifest is {len(key)} characters "
              f"long, more than {MAX_NAME_CHARS}")
        pending.append((key, value))
    while pending:  # a stack, not recursion: a forged manifest may nest deeply
        key, value = pending.pop()
        if isinstance(value, str):
            _need(len(value) <= MAX_TEXT_CHARS, f"a string in '{key}' is {len(value)} characters long, more than "
                  f"{MAX_TEXT_CHARS}")
        elif isinstance(value, Mapping):
            pending += [(key, inner) for item in value.items() for inner in item]
        elif isinstance(value, list):
            pending += [(key, inner) for inner in value]


def _check_fixed_names(attrs: Mapping) -> None:
    """The names this schema fixes: replay reads the ``views`` columns by position, and ``cache info`` and distill
    read split id 0 as train, so a renamed or reordered list would be misread, never refused later."""
    for key, fixed in (("view_params", VIEW_PARAMS), ("splits", SPLITS)):
        stored = attrs[key]
        shown = ", ".join(name[:20] for name in stored[:len(fixed) + 1]) + (", …" if len(stored) > len(fixed) + 1 else "")
        _need(tuple(stored) == fixed, f"'{key}' is [{shown}], not [{', '.join(fixed)}], the names this schema "
              "version defines in that order")


def check_header(attrs: Mapping) -> str:
    """The format version and the status, the keys that say whether anything else can be read; the status."""
    if attrs.get("schema_version") not in READ_VERSIONS:
        raise OtherSchemaVersion(attrs.get("schema_version"))
    status = attrs.get("status")
    _need(status in STATUSES, f"'status' {status!r} is not one of {', '.join(STATUSES)}")
    return status


def _check_shape(attrs: Mapping, version: int) -> tuple[int, int, int | None]:
    """N, V and (version 2 only) D of ``shape``: ``[N, V]``, or ``[N, V, D]`` in version 2."""
    shape = attrs.get("shape")
    want = 2 if version == SCHEMA_VERSION else 3
    _need(isinstance(shape, list) and len(shape) == want, f"'shape' must be {'[N, V]' if want == 2 else '[N, V, D]'}")
    n, v, d = (*shape, None) if want == 2 else shape
    _need(_is_int(n, 1, MAX_SAMPLES) and _is_int(v, 1, MAX_VIEWS) and (d is None or _is_int(d, 1, MAX_FEATURE_DIM)),
          f"'shape' {shape} is out of range (N 1..{MAX_SAMPLES}, V 1..{MAX_VIEWS}, D 1..{MAX_FEATURE_DIM})")
    _need(d is None or v * d <= MAX_FEATURES_PER_SAMPLE, f"'shape' {shape} declares {v * (d or 0)} features per "
          f"sample (V x D), more than {MAX_FEATURES_PER_SAMPLE}")
    return n, v, d


def _check_fingerprint(attrs: Mapping, n: int, v: int, version: int) -> Fingerprint:
    fp = Fingerprint.from_dict(attrs.get("fingerprint"), with_teacher=version != SCHEMA_VERSION)
    dataset, layout, aug = (fp.dataset.body, fp.layout.body, fp.augmentation.body)
    _need(dataset.get("n") == n, f"fingerprint dataset n={dataset.get('n')!r} differs from shape N={n}")
    _need(isinstance(dataset.get("listing_hash"), str), "fingerprint dataset has no listing_hash")
    _need(dataset.get("classes") == attrs.get("classes"), "'classes' differs from the fingerprint's dataset classes")
    _need(dataset.get("domains") == attrs.get("domains"), "'domains' differs from the fingerprint's dataset domains")
    for key in ("shard_size", "chunk_size"):
        _need(_is_int(layout.get(key), 1, MAX_SHARD_ROWS), f"layout {key} must be a positive integer, got "
              f"{layout.get(key)!r} (at most {MAX_SHARD_ROWS})")
    _need(aug.get("views") == v, f"fingerprint augmentation views={aug.get('views')!r} differs from shape V={v}")
    _check_recipe(aug.get("recipe"))
    return fp


MIN_CROP = 0.01  # the smallest centre crop: a view of a hundredth of the short side (1e-300 rounds to no box at all)


def _number(value: Any, low: float, high: float) -> bool:
    return type(value) in (int, float) and low <= value <= high


def _check_recipe(recipe: Any) -> None:
    """The augmentation recipe (:class:`contract.views.ViewRecipe`) in the ranges it accepts: the stored views are
    checked against it (:func:`contract.views.view_problem`) and evaluation crops by its ``centre_crop``."""
    _need(isinstance(recipe, Mapping), "augmentation recipe is not an object")
    scale, ratio, crop = recipe.get("scale"), recipe.get("ratio"), recipe.get("centre_crop")
    _need(isinstance(scale, list) and len(scale) == 2 and _number(scale[0], 0, 1) and _number(scale[1], scale[0], 1)
          and scale[0] > 0, "augmentation recipe scale is not [min, max] with 0 < min <= max <= 1")
    _need(isinstance(ratio, list) and len(ratio) == 2 and _number(ratio[0], 0, math.inf)
          and _number(ratio[1], ratio[0], math.inf) and 0 < ratio[0] and ratio[1] < math.inf,
          "augmentation recipe ratio is not [min, max] with 0 < min <= max")
    _need(isinstance(recipe.get("flip"), bool), "augmentation recipe flip is not true or false")
    _need(_number(recipe.get("color_jitter"), 0, 1), "augmentation recipe color_jitter is not a number in [0, 1]")
    _need(_number(crop, MIN_CROP, 1), f"augmentation recipe centre_crop {str(crop)[:40]} is not a number in "
          f"[{MIN_CROP}, 1]")


def _legacy_teacher(fp: Fingerprint, d: int, attrs: Mapping) -> tuple[TeacherEntry, ...]:
    """The only teacher of a version-2 store, its component from the store's fingerprint."""
    teacher = fp.teacher.body
    _need(isinstance(teacher.get("name"), str), "fingerprint teacher has no name")
    _need(teacher.get("feature_dim", d) == d, f"fingerprint teacher feature_dim={teacher.get('feature_dim')!r} "
          f"differs from shape D={d}")
    return (TeacherEntry(teacher["name"], fp.teacher, d, attrs["status"], 0, attrs.get("completed"), legacy=True),)


def _check_block_bytes(layouts: list[Layout]) -> None:
    """No storage object decodes to more than :data:`MAX_BLOCK_BYTES`: a reader holds one whole."""
    for layout in layouts:
        for name, spec in ARRAYS.items():
            nbytes = math.prod(layout.storage_block(name)) * np.dtype(spec.dtype).itemsize
            _need(nbytes <= MAX_BLOCK_BYTES, f"one shard of array '{name}' decodes to {nbytes} bytes (shard_size "
                  f"{layout.shard_size}), more than {MAX_BLOCK_BYTES}")


def _check_data_spec(attrs: Mapping, store_root: Path | None) -> DataSpec:
    spec = attrs.get("data_spec")
    _need(isinstance(spec, str) and "\x00" not in spec, "'data_spec' must be a string")
    try:
        parsed = parse_data_spec(spec)
    except DataSpecError as exc:
        _need(exc.part is not None, f"'data_spec' kind {exc.kind!r} is not one of {', '.join(DATA_KINDS)}")
        raise ManifestError(f"'data_spec' part {exc.part[:40]!r} is not unlabeled:NAME=PATH") from None
    if store_root is not None:
        for folder in parsed.folders:
            _need(not Path(folder).expanduser().resolve().is_relative_to(store_root), "'data_spec' points inside "
                  "the store itself (a store holds features, never the dataset it was made from)")
    return parsed


_KEYS = ("fingerprint", "data_spec", "classes", "domains", "splits", "view_params", "shape", "n_shards", "teachers",
         "versions", "created", "extract_config", "schema_version", "status", "n_invalid", "completed")


@dataclass(frozen=True)
class Manifest:
    """The root attrs of a store (under ``customkd``), typed. Optional keys are ``None`` when absent;
    ``extra`` keeps keys this version does not know, so :meth:`to_attrs` gives back the stored dict.

    ``status`` is the view set's (views, listing, content hashes: shared by every teacher); each of ``teachers``
    has its own. A version-2 store reads as one teacher (``legacy``) whose component is in the fingerprint."""

    fingerprint: Fingerprint
    data_spec: str
    classes: tuple[str, ...]
    domains: tuple[str, ...]
    splits: tuple[str, ...]
    view_params: tuple[str, ...]
    shape: tuple[int, int]  # N, V
    teachers: tuple[TeacherEntry, ...] = ()
    n_shards: int | None = None
    versions: dict | None = None  # library versions at extraction
    created: str | None = None
    extract_config: dict | None = None
    schema_version: int = SCHEMA_VERSION
    status: str = STATUS_CREATING
    n_invalid: int | None = None  # set when the store is complete
    completed: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: Mapping, store_root: Path | None = None) -> Manifest:
        """Check every key readers act on, in the order a reader would trip over them; the first problem is a
        :class:`ManifestError`. With ``store_root`` (a local store, resolved) the data spec may not point inside it."""
        _need(isinstance(attrs, Mapping), "the manifest is not an object")
        check_header(attrs)
        _check_strings(attrs)
        version = attrs["schema_version"]
        n, v, d = _check_shape(attrs, version)
        for key in ("classes", "domains", "splits", "view_params"):
            _names(attrs, key)
        _check_fixed_names(attrs)
        fp = _check_fingerprint(attrs, n, v, version)
        teachers = _check_teachers(attrs, v) if d is None else _legacy_teacher(fp, d, attrs)
        layout = Layout(n, v, 0, len(VIEW_PARAMS), fp.layout.shard_size)
        _check_block_bytes([replace(layout, feature_dim=t.feature_dim) for t in teachers])
        n_shards = layout.n_shards
        _need(n_shards <= MAX_SHARDS, f"{n_shards} shards is more than {MAX_SHARDS}")
        _need(attrs.get("n_shards", n_shards) == n_shards, f"'n_shards' {attrs.get('n_shards')!r} is not "
              f"ceil(N / shard_size) = {n_shards}")
        _need(_is_int(attrs.get("n_invalid", 0), 0, n), "'n_invalid' must be an integer in 0..N")
        for key in ("created", "completed"):
            _need(isinstance(attrs.get(key, ""), str), f"'{key}' must be a string")
        _check_data_spec(attrs, store_root)
        skip = ("fingerprint", "teachers", "shape")
        typed = {key: _frozen(attrs[key]) for key in _KEYS if key in attrs and key not in skip}
        extra = {key: value for key, value in attrs.items() if key not in _KEYS}
        for key in ("versions", "extract_config"):  # not checked: kept as stored, whatever it is
            if key in typed and not isinstance(typed[key], dict):
                extra[key] = typed.pop(key)
        return cls(fingerprint=fp, shape=(n, v), teachers=teachers, **copy.deepcopy(typed),
                   extra=copy.deepcopy(extra))

    def to_attrs(self) -> dict:
        """The stored form (JSON types), keys in the order extraction writes them."""
        legacy = self.schema_version != SCHEMA_VERSION
        values = {"fingerprint": self.fingerprint.to_dict(), **{key: getattr(self, key) for key in _KEYS[1:]}}
        values["shape"] = [*self.shape, self.teachers[0].feature_dim] if legacy else list(self.shape)
        values["teachers"] = None if legacy else [t.to_dict() for t in self.teachers]
        attrs = {key: list(value) if isinstance(value, tuple) else copy.deepcopy(value)
                 for key, value in values.items() if value is not None}
        return {**attrs, **copy.deepcopy(self.extra)}

    def with_status(self, status: str) -> Manifest:
        return replace(self, status=status)

    @property
    def n_samples(self) -> int:
        return self.shape[0]

    @property
    def n_views(self) -> int:
        return self.shape[1]

    @property
    def writable(self) -> bool:
        """Only stores of this version are written to (extended, resumed); older ones are read."""
        return self.schema_version == SCHEMA_VERSION

    @property
    def layout(self) -> Layout:
        """The store's layout; ``feature_dim`` is 0 (each teacher has its own, :meth:`teacher_layout`)."""
        fp = self.fingerprint.layout
        return Layout(*self.shape, 0, len(self.view_params), fp.shard_size, fp.chunk_size, bool(fp.compress))

    def teacher_layout(self, teacher: TeacherEntry) -> Layout:
        return replace(self.layout, feature_dim=teacher.feature_dim)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.teachers)

    def teacher(self, name: str) -> TeacherEntry | None:
        return next((t for t in self.teachers if t.name == name), None)

    @property
    def feature_dim(self) -> int:
        """D of the features a reader gets: the sum over ``teachers`` (after :meth:`for_teachers`, the chosen)."""
        return sum(t.feature_dim for t in self.teachers)

    def arrays(self) -> dict[str, tuple[str, Layout]]:
        """Every array the store holds: stored name → (its :data:`ARRAYS` entry, the layout that sizes it)."""
        found: dict[str, tuple[str, Layout]] = {}
        for name, spec in ARRAYS.items():  # in the table's order, each per-teacher array once per teacher
            teachers = self.teachers if spec.per_teacher else ()
            found.update({teacher.array(name): (name, self.teacher_layout(teacher)) for teacher in teachers}
                         or {name: (name, self.layout)})
        return found

    def for_teachers(self, names: tuple[str, ...]) -> Manifest:
        """This manifest as a reader of teachers ``names`` (features concatenated in this order) sees it: only
        those teachers, and a fingerprint whose ``teacher`` component is theirs (:func:`ensemble_component`)."""
        chosen = tuple(self.teacher(name) for name in names)
        component = ensemble_component([t.component for t in chosen])
        return replace(self, teachers=chosen, fingerprint=replace(self.fingerprint, teacher=component))


# ---------------------------------------------------------------- the dataset listing

DATA_KINDS = ("elpv", "digits", "folder", "cifar100")


class DataSpecError(ValueError):
    """A data spec outside the grammar: an unknown ``kind``, or a ``part`` after ``|`` that is not
    ``unlabeled:NAME=PATH`` (then ``part`` is set)."""

    def __init__(self, kind: str, part: str | None = None) -> None:
        super().__init__(f"kind {kind!r}" if part is None else f"part {part!r}")
        self.kind, self.part = kind, part


@dataclass(frozen=True)
class DataSpec:
    """``KIND[:ARG]`` (``elpv``, ``digits``, ``folder:PATH``, ``cifar100:PATH``) then ``|unlabeled:NAME=PATH`` parts."""

    kind: str
    arg: str
    unlabeled: tuple[tuple[str, str], ...] = ()  # (domain name, folder)

    @property
    def folders(self) -> list[str]:
        """Every folder the spec reads images from."""
        return ([self.arg] if self.kind not in ("elpv", "digits") else []) + [folder for _, folder in self.unlabeled]


def unlabeled_part(name: str, folder: str) -> str:
    return f"unlabeled:{name}={folder}"


def parse_data_spec(spec: str) -> DataSpec:
    """The one parser of data specs (``extract --data``, a manifest's ``data_spec``); :class:`DataSpecError`."""
    base, *parts = spec.split("|")
    kind, _, arg = base.partition(":")
    if kind not in DATA_KINDS:
        raise DataSpecError(kind)
    unlabeled = []
    for part in parts:
        part_kind, _, named = part.partition(":")
        name, _, folder = named.partition("=")
        if part_kind != "unlabeled" or not name or not folder:
            raise DataSpecError(kind, part)
        unlabeled.append((name, folder))
    return DataSpec(kind, arg, tuple(unlabeled))
