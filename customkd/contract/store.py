"""The feature store on storage: create, open, validate, write shards, list and check its objects.

What a store holds — its arrays, layout, manifest and fingerprint — is :mod:`contract.schema`, the
written contract between the two processes; this module puts it on storage (one Zarr v3 group per
cache, see docs/design.md §4) and reads it back. The manifest lives in the root attrs under ``customkd``.
Writes are whole shards; a shard's ``done`` flag is written after its data, and ``status`` becomes
``complete`` only when every flag is set. This module is shared by both processes and imports no
teacher code.

A store location is a local path or a URL (``s3://…``, ``gs://…``, ``file://…``); :mod:`contract.storage` is the
strategy for each kind (remote ones go through :mod:`contract.location`, fsspec), and messages show them redacted.
Readers open a :class:`Store` once: it holds the validated manifest, and its :meth:`Store.reader` the manifest as
the chosen teachers see it and the identity that tells a replaced store.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import numpy as np

from customkd.common.errors import UserError
from customkd.common.files import parse_json
from customkd.contract import location as where
from customkd.contract.listing import Listing, ListingDiff, compare_listing
from customkd.contract.location import display
from customkd.contract.schema import (
    ARRAYS,
    ATTRS_KEY,
    SCHEMA_VERSION,
    STATUS_COMPLETE,
    STATUS_CREATING,
    STATUS_IN_PROGRESS,
    TEACHER_ARRAYS,
    VIEW_SET_ARRAYS,
    Layout,
    Manifest,
    ManifestError,
    OtherSchemaVersion,
    TeacherEntry,
    check_header,
    only_teachers,
)
from customkd.contract.storage import Storage, storage_for


def _codecs(layout: Layout) -> list:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    # crc32c per inner chunk: a flipped byte is detected on read instead of trained on.
    return [ZstdCodec(level=3), Crc32cCodec()] if layout.compress else [Crc32cCodec()]


def _zarr_group(storage: Storage, mode: str):
    import zarr

    from customkd.contract.zarr_codecs import use_bounded_zstd

    use_bounded_zstd()
    return zarr.open_group(store=storage.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)


def open_group(path: str | Path, mode: str):
    """The store's Zarr group as it is, unchecked (benchmarks of a store they made); readers use :class:`Store`."""
    storage = storage_for(path)
    with storage.errors():
        return _zarr_group(storage, mode)


def _create_group(storage: Storage, attributes: dict):
    import zarr

    from customkd.contract.zarr_codecs import use_bounded_zstd

    use_bounded_zstd()
    return zarr.create_group(storage.zarr_store(read_only=False), zarr_format=3, attributes=attributes)


def create_store(path: str | Path, manifest: Manifest, per_sample: dict[str, np.ndarray]):
    """Create an empty store and write the per-sample listing arrays (:data:`contract.schema.LISTING_ARRAYS`).

    The group is born with ``status = creating``; only when every array exists and the listing
    arrays are written does it become ``in_progress`` (resumable). A kill in between leaves a
    store that the next run recognises as safe to recreate.
    """
    from zarr.errors import ContainsArrayError, ContainsGroupError

    storage = storage_for(path)
    try:
        with storage.errors():
            return _create_arrays(storage, manifest, per_sample)
    except (ContainsGroupError, ContainsArrayError):  # another process created the store (or an array) first
        raise UserError(f"{display(storage.path)} became a store while this command was creating it: another "
                        "process is writing it; wait for that one to end, or choose another place") from None


def _array_options(layout: Layout, name: str) -> dict:
    """Zarr chunking of one array: a storage object per shard (inner chunks of ``chunk_size`` rows for the
    per-view arrays), crc32c checksums; the ``done`` flags are one bare object each."""
    shape, block = layout.shape(name), layout.storage_block(name)
    if ARRAYS[name].dims == ("n_shards",):
        return {"chunks": block, "compressors": None}
    if len(shape) > 1:
        return {"chunks": (min(layout.chunk_size, layout.shard_size), *shape[1:]), "shards": block,
                "compressors": _codecs(layout)}
    return {"chunks": block, "compressors": _codecs(layout)}


def _create_array(group, stored: str, name: str, layout: Layout) -> None:
    spec = ARRAYS[name]
    group.create_array(stored, shape=layout.shape(name), dtype=spec.dtype, fill_value=spec.fill,
                       **_array_options(layout, name))


def _create_arrays(storage: Storage, manifest: Manifest, per_sample: dict[str, np.ndarray]):
    group = _create_group(storage, {ATTRS_KEY: manifest.with_status(STATUS_CREATING).to_attrs()})
    for stored, (name, layout) in manifest.arrays().items():
        _create_array(group, stored, name, layout)
    for name, values in per_sample.items():
        _writable(group, name)[:] = values
    group.attrs[ATTRS_KEY] = manifest.with_status(STATUS_IN_PROGRESS).to_attrs()
    return group


def _writable(group, name: str):
    """The array with every chunk written, even one equal to the fill value (labels all 0, a shard of
    skipped images): a complete store then has every chunk on storage, and a missing one is damage."""
    return group[name].with_config({"write_empty_chunks": True})


def remove_partials(path: str | Path) -> int:
    """Delete temporary ``*.partial`` files a killed writer left (zarr writes temp file + rename).

    Local stores only: object stores write each object in one PUT and leave no temp files."""
    return storage_for(path).remove_partials()


def read_attrs(group) -> dict:
    """The manifest as stored (raw JSON attrs); readers use :func:`read_manifest`."""
    attrs = group.attrs.get(ATTRS_KEY)
    if not isinstance(attrs, dict):
        raise UserError("this Zarr group is not a customkd feature store (no 'customkd' attrs)")
    return attrs


def _manifest_error(path: str | Path | None, exc: ManifestError) -> UserError:
    name = display(path) if path is not None else "(opened store)"
    if isinstance(exc, OtherSchemaVersion):
        return UserError(f"cache {name} has store schema version {exc.found!r}, this customkd reads version "
                         f"{SCHEMA_VERSION}; rebuild it with this version (`customkd extract ... --overwrite`)")
    return UserError(f"cache {name} has a malformed manifest: {exc}; it was damaged or edited after extraction: "
                     "get a fresh copy or re-extract it with --overwrite")


def _local_root(path: str | Path | None) -> Path | None:
    return None if path is None else storage_for(path).resolved_root()


def read_status(group, path: str | Path | None = None) -> str:
    """The store's status (format version checked): all that is known of a store still being created."""
    try:
        return check_header(read_attrs(group))
    except ManifestError as exc:
        raise _manifest_error(path, exc) from None


def read_manifest(group, path: str | Path | None = None) -> Manifest:
    """The store's manifest, typed and checked (:meth:`contract.schema.Manifest.from_attrs`).

    ``path`` names the store in messages and, for a local store, keeps its data spec out of it."""
    try:
        return Manifest.from_attrs(read_attrs(group), store_root=_local_root(path))
    except ManifestError as exc:
        raise _manifest_error(path, exc) from None


def set_status(group, status: str) -> None:
    group.attrs[ATTRS_KEY] = {**read_attrs(group), "status": status}


def store_exists(path: str | Path) -> bool:
    return storage_for(path).exists()


def is_foreign(path: str | Path) -> bool:
    """Something is at ``path`` that is not a customkd store: writers must leave it alone.

    An empty directory is not foreign (nothing to lose); a half-copied store is (no manifest yet)."""
    return storage_for(path).is_foreign()


def _has_customkd_manifest(path: str | Path) -> bool:
    """Whether the root ``zarr.json`` is a Zarr v3 group whose attrs hold a customkd manifest (any version or
    status: an old or half-created store is still ours to replace)."""
    blob = storage_for(path).root_metadata_head()
    try:
        document = parse_json(blob) if len(blob) <= where.MAX_METADATA_BYTES else None
    except ValueError:  # not JSON
        return False
    if not (isinstance(document, dict) and document.get("zarr_format") == 3 and document.get("node_type") == "group"):
        return False
    attrs = document.get("attributes")
    manifest = attrs.get(ATTRS_KEY) if isinstance(attrs, dict) else None
    return isinstance(manifest, dict) and "schema_version" in manifest


def check_removable(path: str | Path) -> None:
    """Refuse to delete anything but a store customkd made: a customkd manifest at the root, and nothing in it but
    what a store holds (:func:`contract.storage.is_store_entry`). A user's own file there, or someone else's Zarr
    group, survives."""
    name = display(path)
    if not _has_customkd_manifest(path):
        raise UserError(f"{name} is not a customkd store (its {where.ROOT_METADATA} holds no customkd manifest); "
                        "nothing was deleted: choose another --out")
    try:
        foreign = storage_for(path).foreign_entry()
    except OSError as exc:
        raise UserError(f"cannot read {name} ({exc.strerror or type(exc).__name__}: {exc.filename}); nothing was "
                        "deleted: fix the permissions or choose another --out") from None
    if foreign is not None:
        raise UserError(f"{name} holds {foreign}, which is not part of a customkd store; nothing was deleted: move "
                        "it out of the store (or delete the store yourself), or choose another --out")


def delete_store(path: str | Path) -> None:
    """Remove a whole store (``--overwrite``, or a store killed while being created), only after
    :func:`check_removable`."""
    storage = storage_for(path)
    storage.refuse_link()
    with storage.errors():
        check_removable(storage.location)
    storage.delete()


def _check_openable(storage: Storage) -> dict[str, int]:
    """Clear errors for a missing location, a single file, or an interrupted push/pull; the store's objects (key →
    size, :func:`list_objects`). A local store is walked before anything else (links, pipes and devices are
    refused before zarr opens anything); a remote one is listed once it is known to be there."""
    objects = storage.objects_before_open()
    if storage.exists():
        return storage.list_objects() if objects is None else objects
    if where.exists(storage.path, where.COPY_MARKER):
        raise UserError(f"cache {display(storage.path)} is incomplete: a `customkd cache push/pull` into it was "
                        "interrupted before its manifest was written; rerun the same command to finish the copy")
    raise storage.missing(objects)


def _open_checked(storage: Storage, mode: str):
    """The Zarr group of a store whose objects passed :func:`_check_openable`, metadata documents bounded in size
    before zarr parses them; with the objects listed."""
    name, objects = display(storage.path), _check_openable(storage)
    for key, size in sorted(objects.items()):
        if key.rsplit("/", 1)[-1] == where.ROOT_METADATA and size > where.MAX_METADATA_BYTES:
            raise UserError(f"cache {name}: {key} is {size} bytes, more than the {where.MAX_METADATA_BYTES} a "
                            "metadata document may have; nothing was read: get a fresh copy or re-extract it")
    try:
        with storage.errors():
            return _zarr_group(storage, mode), objects
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for malformed metadata
        raise UserError(f"cache {name} is not a readable Zarr v3 store ({_reason(exc)}); get a fresh copy or "
                        "re-extract it") from None


def choose_teachers(manifest: Manifest, choice: str | None, path: str | Path) -> Manifest:
    """The manifest as a reader of ``choice`` sees it (:meth:`Manifest.for_teachers`): one teacher ``NAME``, several
    ``A,B`` (features concatenated in that order), or None for a store's only teacher. Refuses an unknown, repeated
    or unfinished teacher, and None where the store has several, listing them."""
    listed = ", ".join(f"{t.name} ({t.status})" for t in manifest.teachers)
    name = display(path)
    if choice is None:
        if len(manifest.teachers) > 1:
            raise UserError(f"cache {name} holds {len(manifest.teachers)} teachers: {listed}; choose one with "
                            "--teacher NAME, or several with --teacher A,B to concatenate their features")
        wanted = manifest.teacher_names
    else:
        wanted = tuple(part.strip() for part in choice.split(","))
    unknown = [t for t in wanted if manifest.teacher(t) is None]
    if unknown or not wanted or len(set(wanted)) != len(wanted):
        what = f"has no teacher {unknown[0]!r}" if unknown else f"cannot use --teacher {choice!r} (a name twice?)"
        raise UserError(f"cache {name} {what}; its teachers: {listed}")
    unfinished = next((manifest.teacher(t) for t in wanted if manifest.teacher(t).status != STATUS_COMPLETE), None)
    if unfinished is not None:
        raise UserError(f"teacher {unfinished.name} of cache {name} is {unfinished.status}, not complete; finish it "
                        f"with `customkd extract --teacher {unfinished.name} --into {name}` (the same options again)")
    return manifest.for_teachers(wanted)


class Store:
    """A store opened once and validated: its location strategy (:mod:`contract.storage`), Zarr group and
    manifest — checked by :func:`validate_manifest`, None while the store is still being created.

    Opening (:meth:`open`) bounds the metadata documents in size before zarr parses them, validates the manifest,
    then every object's size against what the manifest allows (:func:`check_object_sizes`), so no read is larger
    than a valid store's would be; local stores are first walked: only regular files may be in them (see
    :func:`list_objects`). Readers take :meth:`reader` for the teachers they use."""

    def __init__(self, path: str | Path, storage: Storage, group, manifest: Manifest | None) -> None:
        self.path, self.storage, self.group, self.manifest = path, storage, group, manifest

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> Store:
        """Open an existing store (``mode`` ``r`` or ``r+``) and validate it before anyone uses it."""
        storage = storage_for(path)
        group, objects = _open_checked(storage, mode)
        manifest = validate_manifest(group, path)
        if manifest is not None:
            check_object_sizes(group, manifest, objects, path)
        return cls(path, storage, group, manifest)

    @classmethod
    def open_complete(cls, path: str | Path) -> Store:
        """Open a store for reading, refusing one whose extraction has not completed."""
        opened = cls.open(path, mode="r")
        if opened.status == STATUS_CREATING:
            raise UserError(f"cache {display(path)} was interrupted while being created; rerun the same extract "
                            "command (it creates the store again)")
        if opened.status != STATUS_COMPLETE:
            done = np.asarray(opened.group["done"][:])
            raise UserError(
                f"cache {display(path)} is incomplete ({int(done.sum())}/{len(done)} shards done); rerun the same "
                "extract command to resume it"
            )
        return opened

    @property
    def status(self) -> str:
        return STATUS_CREATING if self.manifest is None else self.manifest.status

    def stored_manifest(self) -> Manifest:
        """The manifest as stored, also of a store still being created (then typed and checked by
        :func:`read_manifest` only, not against the arrays)."""
        return self.manifest if self.manifest is not None else read_manifest(self.group, self.path)

    def identity(self, teachers: tuple[str, ...] | None = None) -> str:
        """:func:`store_identity` of this store, read now."""
        return _identity(self.storage, teachers)

    def list_objects(self) -> dict[str, int]:
        """:func:`list_objects`, listed now."""
        return self.storage.list_objects()

    def chunk_problems(self) -> list[str]:
        """Every storage object of a complete store missing, empty or cut short, named by array and shard (listed
        now: writers store every chunk, so a missing one is damage that would read as the fill value)."""
        return _chunk_problems(self.group, self.manifest, self.list_objects())

    def for_teachers(self, teachers: str | None) -> Manifest:
        """The manifest as a reader of ``teachers`` sees it (:func:`choose_teachers`)."""
        return choose_teachers(self.manifest, teachers, self.path)

    def reader(self, teachers: str | None) -> StoreReader:
        """The store as a reader of ``teachers`` sees it, with its identity taken now."""
        manifest = self.for_teachers(teachers)
        return StoreReader(self, manifest, self.identity(manifest.teacher_names))


@dataclass(frozen=True)
class StoreReader:
    """One reader's view of a complete :class:`Store`: the manifest as its teachers' reader sees it
    (:meth:`Manifest.for_teachers`) and the store's identity when it was taken, to refuse a store replaced while
    it is read (:meth:`check_same`)."""

    store: Store
    manifest: Manifest
    identity: str

    @property
    def teachers(self) -> tuple[str, ...]:
        return self.manifest.teacher_names

    @property
    def feature_arrays(self) -> list[str]:
        """The stored features arrays of the reader's teachers, in the order their features concatenate."""
        return [t.array("features") for t in self.manifest.teachers]

    def compare_listing(self, listing: Listing, stored: Mapping[str, np.ndarray] | None = None) -> ListingDiff:
        """The dataset listing against the store (:func:`contract.listing.compare_listing`)."""
        return compare_listing(listing, self.manifest, stored)

    def check_same(self) -> None:
        """Refuse to go on reading if the store's root manifest changed (other teachers' entries aside)."""
        if self.store.identity(self.teachers) != self.identity:
            raise _changed(self.store.path)


def open_store(path: str | Path, mode: str = "r"):
    """The Zarr group of :meth:`Store.open` (for code that reads arrays by name only)."""
    return Store.open(path, mode).group


def open_complete_store(path: str | Path):
    """The Zarr group of :meth:`Store.open_complete`."""
    return Store.open_complete(path).group


def _reason(exc: BaseException) -> str:
    return where.redact(str(exc).split("\n")[0][:160]) or type(exc).__name__


# ---------------------------------------------------------------- a store is untrusted input (docs/design.md §10)

def _array_problem(group, manifest: Manifest) -> None:
    """Every array exists with the shape, dtype and storage chunking the manifest implies."""
    for stored, (name, layout) in manifest.arrays().items():
        spec, shape, storage = ARRAYS[name], layout.shape(name), layout.storage_block(name)
        try:
            array = group.get(stored)
            found = None if array is None else (tuple(array.shape), str(array.dtype), storage_chunks(array))
        except Exception as exc:  # noqa: BLE001 - malformed array metadata
            raise ManifestError(f"array '{stored}' has unreadable metadata ({_reason(exc)})") from None
        if found is None:
            raise ManifestError(f"array '{stored}' is missing")
        if found[0] != shape:
            raise ManifestError(f"array '{stored}' has shape {found[0]}, the manifest implies {shape}")
        if found[1] != spec.dtype:
            raise ManifestError(f"array '{stored}' has dtype {found[1]}, not {spec.dtype}")
        if found[2] != storage:
            raise ManifestError(f"array '{stored}' is stored in blocks of {found[2]}, the layout implies {storage}")
        differs = _first_difference(_encoding(array.metadata), _written_encoding(name, layout))
        if differs:
            raise ManifestError(f"array '{stored}' metadata: {differs}")


_ENCODING_KEYS = ("codecs", "fill_value", "chunk_key_encoding", "storage_transformers")


def _encoding(metadata) -> dict:
    """How an array's chunks become objects: codecs (inner chunks, compression, checksums, byte order), fill value,
    object keys and storage transformers, in zarr's normalised JSON form."""
    stored = metadata.to_dict()
    return json.loads(json.dumps({key: stored.get(key) for key in _ENCODING_KEYS}, default=str))


@functools.cache
def _written_encoding(name: str, layout: Layout) -> dict:
    """:func:`_encoding` of array ``name`` as :func:`_create_array` creates it for ``layout`` (made in memory)."""
    import zarr
    from zarr.storage import MemoryStore

    group = zarr.create_group(MemoryStore(), zarr_format=3)
    _create_array(group, name, name, layout)
    return _encoding(group[name].metadata)


def _first_difference(found, written, where: str = "") -> str | None:
    """Where two JSON values first differ, and both sides (shortened), or None."""
    if isinstance(found, dict) and isinstance(written, dict) and found.keys() == written.keys():
        pairs = [(f"{where}.{key}" if where else key, found[key], written[key]) for key in written]
    elif isinstance(found, list) and isinstance(written, list) and found and written:
        pairs = [(f"{where}[{i}]", a, b) for i, (a, b) in enumerate(zip(found, written, strict=False))]
        pairs.append((f"{where}[{len(pairs)}:]", found[len(pairs):], written[len(pairs):]))
    else:
        shown = [json.dumps(value, separators=(",", ":"))[:120] for value in (found, written)]
        return None if found == written else f"{where} is {shown[0]} where extraction writes {shown[1]}"
    return next((d for d in (_first_difference(a, b, w) for w, a, b in pairs) if d), None)


def validate_manifest(group, path: str | Path) -> Manifest | None:
    """The store's manifest after checking every key readers act on (:meth:`Manifest.from_attrs`: types and
    ranges of shape, names, fingerprint, layout, status and data spec — a known kind, never a path inside the
    store), then each array's shape, dtype and chunking against it; one UserError naming the first problem.
    None for a store still being created (only its status is known). Nothing is allocated from a size
    before it passed here."""
    if read_status(group, path) == STATUS_CREATING:
        return None
    manifest = read_manifest(group, path)
    try:
        _array_problem(group, manifest)
    except ManifestError as exc:
        raise _manifest_error(path, exc) from None
    return manifest


def storage_chunks(array) -> tuple[int, ...]:
    """Shape of one storage object of an array: the shard for sharded arrays, else the chunk."""
    return tuple(array.shards or array.chunks)


def chunk_keys(group, name: str) -> list[tuple[int, str]]:
    """(index along rows, object key relative to the store root) of every storage object of an array."""
    array = group[name]
    grid = [math.ceil(size / block) for size, block in zip(array.shape, storage_chunks(array), strict=True)]
    return [(coords[0], f"{name}/{array.metadata.encode_chunk_key(coords)}")
            for coords in itertools.product(*(range(g) for g in grid))]


CRC_BYTES = 4  # the crc32c codec's checksum after every chunk (and after a shard's index)
INDEX_ENTRY_BYTES = 16  # a shard index holds an offset and a length (uint64 each) per inner chunk


def object_size_range(layout: Layout, name: str, shard: int) -> tuple[int, int]:
    """Fewest and most bytes storage object ``shard`` of array ``name`` holds as :func:`_array_options` writes it.

    Every chunk is written (``write_empty_chunks``), so an uncompressed object has exactly one size: its inner
    chunks' bytes plus a checksum each, plus (sharded arrays) the shard index, which has an entry for every inner
    chunk although those wholly past the last row are never written. A zstd frame is at least a byte and at most
    zstd's bound on incompressible input (``raw + raw/256 + 64`` plus a frame header; twice that margin here)."""
    itemsize = np.dtype(ARRAYS[name].dtype).itemsize
    block = layout.storage_block(name)
    if ARRAYS[name].dims == ("n_shards",):  # no codecs: the bare flag
        return math.prod(block) * itemsize, math.prod(block) * itemsize
    options = _array_options(layout, name)
    inner = options["chunks"]
    raw = math.prod(inner) * itemsize
    fewest, most = (1, raw + raw // 128 + 1024) if layout.compress else (raw, raw)
    if "shards" not in options:
        return fewest + CRC_BYTES, most + CRC_BYTES
    rows = layout.shard_rows(shard)
    n_inner, written = math.ceil(block[0] / inner[0]), math.ceil((rows.stop - rows.start) / inner[0])
    index = n_inner * INDEX_ENTRY_BYTES + CRC_BYTES
    return index + written * (fewest + CRC_BYTES), index + written * (most + CRC_BYTES)


def object_limits(group, manifest: Manifest) -> dict[str, tuple[int, int]]:
    """Key → (fewest, most) bytes, for every object a store consists of: the metadata documents (``zarr.json``)
    and one storage object per shard of each array the manifest lists (:meth:`Manifest.arrays`: every teacher's)."""
    limits = {where.ROOT_METADATA: (1, where.MAX_METADATA_BYTES)}
    for stored, (name, layout) in manifest.arrays().items():
        limits[f"{stored}/{where.ROOT_METADATA}"] = (1, where.MAX_METADATA_BYTES)
        limits.update((key, object_size_range(layout, name, shard)) for shard, key in chunk_keys(group, stored))
    return limits


def check_object_sizes(group, manifest: Manifest, objects: dict[str, int], path: str | Path) -> None:
    """Refuse, before anything is read, an object larger than its array's shard can be (a sparse 20 GB file in
    place of a shard would be read whole), and an array whose objects hold less than half the bytes its declared
    shape needs (a forged shape on a tiny store: readers would allocate and exporters write the declared size)."""
    name, limits = display(path), object_limits(group, manifest)
    for key, size in sorted(objects.items()):
        if key in limits and size > limits[key][1]:
            raise UserError(f"cache {name}: object {key} is {size} bytes, more than the {limits[key][1]} its array's "
                            "shard can be; nothing was read: get a fresh copy of the store or re-extract it")
    for array, (spec_key, layout) in manifest.arrays().items():
        spec = ARRAYS[spec_key]
        present = [key for _, key in chunk_keys(group, array) if key in objects]
        held, needed = sum(objects[key] for key in present), sum(limits[key][0] for key in present)
        if held * 2 < needed:
            shape = layout.shape(spec_key)
            raise UserError(f"cache {name}: array '{array}' declares shape {shape} ({spec.dtype}), but its "
                            f"{len(present)} object(s) hold {held} bytes where that shape needs at least {needed}; "
                            "the shape was forged or the data lost; nothing was read: get a fresh copy or re-extract")


def list_objects(path: str | Path) -> dict[str, int]:
    """Key (relative path) → size of every object of a store.

    For a local store this walks the directory without following links and refuses anything that is
    not a regular file or a directory: a link could point outside the store (or at ``/dev/zero``), a
    named pipe would block every reader. Remote stores are listed through fsspec."""
    return storage_for(path).list_objects()


def _chunk_problems(group, manifest: Manifest, objects: dict[str, int]) -> list[str]:
    """Every storage object a complete store must have but lacks, has empty or has cut short (fewer bytes than its
    layout writes), named by array and shard.

    Writers store every chunk (``write_empty_chunks``), so a missing one is damage — e.g. an interrupted
    ``rsync`` — that would otherwise read as the fill value (labels 0, features NaN)."""
    layout, limits = manifest.layout, object_limits(group, manifest)
    problems = []
    for name in manifest.arrays():
        for shard, key in chunk_keys(group, name):
            size, fewest = objects.get(key, 0), limits[key][0]
            if size >= fewest:
                continue
            state = ("is missing" if key not in objects else "is empty" if not size else
                     f"is cut short ({size} bytes, fewer than the {fewest} its layout writes)")
            problems.append(f"array {name}: shard {shard} ({layout.shard_span(shard)}) {state} (object {key})")
    return problems


def _identity(storage: Storage, teachers: tuple[str, ...] | None) -> str:
    blob = storage.root_metadata()
    if teachers is not None:
        blob = _without_other_teachers(blob, teachers)
    return hashlib.sha256(blob).hexdigest()


def store_identity(path: str | Path, teachers: tuple[str, ...] | None = None) -> str:
    """Hash of the root ``zarr.json`` (manifest, fingerprint, completion time): changes when a store is replaced.

    With ``teachers`` only those teachers' entries count, so a teacher added to the store meanwhile (``extract
    --into``) leaves the identity a reader of other teachers holds unchanged."""
    return _identity(storage_for(path), teachers)


def _without_other_teachers(blob: bytes, teachers: tuple[str, ...]) -> bytes:
    """The root document (canonical JSON) with only ``teachers`` in its manifest's list; unparsable bytes as they
    are (a replaced store then differs as a whole)."""
    try:
        document = parse_json(blob)
        attributes = document["attributes"]
        attributes[ATTRS_KEY] = only_teachers(attributes[ATTRS_KEY], teachers)
    except (ValueError, KeyError, TypeError, AttributeError):
        return blob
    return json.dumps(document, sort_keys=True).encode()


def _changed(path: str | Path) -> UserError:
    return UserError(f"cache {display(path)} changed during training: its manifest is not the one opened at the "
                     "start (the store was replaced or re-extracted); stopped rather than mix two stores — "
                     "rerun distill once the store stays put")


def pending_shards(group, teacher: TeacherEntry) -> list[int]:
    """The shards whose features of ``teacher`` are not written yet."""
    return [int(i) for i in np.flatnonzero(np.asarray(group[teacher.array("teacher_done")][:]) == 0)]


def write_shard(group, layout: Layout, shard: int, teacher: TeacherEntry, features: np.ndarray,
                view_set: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> None:
    """Write one whole shard of ``teacher``'s features — with the first teacher also the view set's arrays
    (``view_set``: views, content hashes, valid flags) and then its ``done`` flag — then (and only then) the
    teacher's flag. A teacher added later writes only its own arrays: the views stay as they are."""
    rows = layout.shard_rows(shard)
    if view_set is not None:
        for name, values in zip(VIEW_SET_ARRAYS, view_set, strict=True):
            _writable(group, name)[rows] = values.astype(ARRAYS[name].dtype)
    _writable(group, teacher.array("features"))[rows] = features.astype(ARRAYS["features"].dtype)
    if view_set is not None:
        group["done"][shard] = 1
    group[teacher.array("teacher_done")][shard] = 1


def _write_manifest(group, manifest: Manifest) -> None:
    group.attrs[ATTRS_KEY] = manifest.to_attrs()


def add_teacher(group, manifest: Manifest, teacher: TeacherEntry) -> Manifest:
    """Give a complete store one more teacher (``teacher.slot`` is a new slot, or an existing one to redo): the
    manifest lists it as ``creating`` first, then its arrays are (re)created empty, then it is ``in_progress``. A
    kill in between leaves a ``creating`` teacher that the next run creates again; other teachers are untouched."""
    slot = teacher.slot
    teachers = [*manifest.teachers[:slot], replace_status(teacher, STATUS_CREATING), *manifest.teachers[slot + 1:]]
    creating = dataclass_replace(manifest, teachers=tuple(teachers))
    _write_manifest(group, creating)
    for name in TEACHER_ARRAYS:
        stored = teacher.array(name)
        if stored in group:
            del group[stored]
        _create_array(group, stored, name, manifest.teacher_layout(teacher))
    teachers[slot] = replace_status(teacher, STATUS_IN_PROGRESS)
    started = dataclass_replace(manifest, teachers=tuple(teachers))
    _write_manifest(group, started)
    return started


def replace_status(teacher: TeacherEntry, status: str, completed: str | None = None) -> TeacherEntry:
    return dataclass_replace(teacher, status=status, completed=completed)


def mark_complete(group, teacher_name: str) -> None:
    """The last write of an extraction: every shard of ``teacher_name`` is done (and of the view set, whose
    status becomes complete with the first teacher); record how many samples are invalid."""
    manifest = Manifest.from_attrs(read_attrs(group))
    now = dt.datetime.now(dt.UTC).isoformat()
    teachers = tuple(replace_status(t, STATUS_COMPLETE, now) if t.name == teacher_name else t
                     for t in manifest.teachers)
    if manifest.status != STATUS_COMPLETE:
        n_invalid = int((np.asarray(group["valid"][:]) == 0).sum())
        manifest = dataclass_replace(manifest, status=STATUS_COMPLETE, n_invalid=n_invalid, completed=now)
    _write_manifest(group, dataclass_replace(manifest, teachers=teachers))


def manifest_summary(manifest: Manifest) -> dict[str, Any]:
    return {
        "status": manifest.status,
        "teachers": ", ".join(manifest.teacher_names),
        "dataset": manifest.data_spec,
        "shape": f"N={manifest.n_samples} V={manifest.n_views}",
        "views_recipe": manifest.fingerprint.augmentation.recipe,
        "fingerprint": manifest.fingerprint.short(),
        "invalid_samples": manifest.n_invalid or 0,
        "schema_version": manifest.schema_version,
    }
