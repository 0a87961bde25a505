"""The `customkd cache` commands: info, verify, HDF5 export/import (the store as one file), and the
teacher re-check. Copying stores between locations is featcache/remote.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from customkd.common.errors import UserError
from customkd.common.files import check_new_file, parse_json, writing_new_file
from customkd.contract import location as where
from customkd.contract import store as fs
from customkd.contract.datasets import DatasetListing, load_listing
from customkd.contract.fingerprint import TeacherComponent
from customkd.contract.listing import compare_listing
from customkd.contract.schema import (
    ARRAYS,
    ATTRS_KEY,
    LISTING_ARRAYS,
    STALENESS_ARRAYS,
    TEACHER_ARRAYS,
    VIEW_SET_ARRAYS,
    Manifest,
    ManifestError,
    TeacherEntry,
)
from customkd.contract.storage import storage_for
from customkd.contract.values import block_problem, count_problem

log = logging.getLogger(__name__)


def store_info(path: str) -> dict:
    """The manifest summary, shards done, size on disk; ``manifest`` as stored (for ``--json``) and the
    fingerprint ``components``. Of a store still being created only the status is known."""
    opened = fs.Store.open(path)
    group, manifest = opened.group, opened.manifest
    if manifest is None:
        summary = {"status": fs.STATUS_CREATING,
                   "shards_done": "none (creation was interrupted; rerun the extract command)"}
    else:
        done = np.asarray(group["done"][:])
        summary = {**fs.manifest_summary(manifest), **label_summary(group, manifest),
                   "shards_done": f"{int(done.sum())}/{len(done)}", **teacher_summary(opened)}
    summary["size_on_disk"] = f"{opened.storage.size_bytes() / 2**20:.1f} MiB"
    summary["created"] = manifest.created if manifest else None
    summary["manifest"] = fs.read_attrs(group)
    summary["components"] = {name: part.body for name, part in manifest.fingerprint.components().items()} \
        if manifest else {}
    for teacher in manifest.teachers if manifest and manifest.writable else ():
        summary["components"][f"teacher {teacher.name}"] = teacher.component.body
    return summary


def teacher_summary(opened: fs.Store) -> dict[str, str]:
    """One line per teacher: D, input size, tap, precision, status, shards done and the bytes of its arrays."""
    group, objects = opened.group, opened.list_objects()
    summary = {}
    for teacher in opened.manifest.teachers:
        arrays = [teacher.array(name) for name in TEACHER_ARRAYS]
        nbytes = sum(size for key, size in objects.items() if key.split("/", 1)[0] in arrays)
        done = np.asarray(group[teacher.array("teacher_done")][:])
        body = teacher.component
        summary[f"teacher {teacher.name}"] = (
            f"D={teacher.feature_dim} size={body.size} tap={body.tap} precision={body.precision} {teacher.status} "
            f"({int(done.sum())}/{len(done)} shards) {nbytes / 2**20:.2f} MiB")
    return summary


def label_summary(group, manifest: Manifest) -> dict[str, str]:
    """The classes, and per split how many rows are stored with each label (or none): what ``distill`` can use.
    The labels and splits are N small integers each, written at creation, so this reads little."""
    classes = manifest.classes
    try:
        labels, split = np.asarray(group["labels"][:]), np.asarray(group["split"][:])
    except Exception as exc:  # noqa: BLE001 - a damaged chunk fails in the codec; verify names it
        return {"classes": f"{len(classes)}", "rows": f"unreadable ({type(exc).__name__}); `customkd cache verify` "
                                                      "names the damaged object"}
    shown = ", ".join(classes[:12]) + (f", … ({len(classes)} in all)" if len(classes) > 12 else "")
    summary = {"classes": f"{len(classes)}: {shown}"}
    for index, name in enumerate(manifest.splits):
        rows = labels[split == index]
        counts = np.bincount(rows[rows >= 0], minlength=len(classes))
        per_class = f"{counts.min()}–{counts.max()} per class" if len(counts) else "none"
        summary[f"rows_{name}"] = f"{len(rows)} ({int((rows >= 0).sum())} labeled: {per_class}; " \
                                  f"{int((rows < 0).sum())} unlabeled)"
    return summary


def _read_problems(group, manifest: Manifest) -> list[str]:
    """Read every shard of every array of the manifest's teachers and view set (crc32c catches altered bytes) and
    check its values (:func:`contract.values.block_problem`: integers in range, finite features and drawable views
    for valid samples, set completion flags), and the manifest's count of invalid samples."""
    layout = manifest.layout
    try:
        stored_valid = np.asarray(group["valid"][:])
        valid = stored_valid.astype(bool)
        problems = [problem] if (problem := count_problem(stored_valid, manifest)) else []
    except Exception:  # noqa: BLE001 - named per shard below
        valid, problems = np.ones(layout.n_samples, dtype=bool), []
    for stored, (name, _) in manifest.arrays().items():
        for shard in range(layout.n_shards):
            flag = ARRAYS[name].dims == ("n_shards",)
            rows = shard if flag else layout.shard_rows(shard)
            try:
                block = np.asarray(group[stored][rows])
            except Exception as exc:  # noqa: BLE001 - checksum failures surface as codec errors
                problems.append(f"array {stored}: shard {shard} ({layout.shard_span(shard)}) is damaged "
                                f"({type(exc).__name__})")
                continue
            place = f"array {stored}: shard {shard} ({layout.shard_span(shard)})"
            problem = block_problem(name, block, valid[rows] if not flag else None, rows, manifest, place)
            if problem:
                problems.append(problem)
    return problems


def _dataset_problems(group, manifest: Manifest, listing: DatasetListing) -> list[str]:
    """The dataset listing against the store (:func:`contract.listing.compare_listing`), one line per problem."""
    try:
        stored = {name: np.asarray(group[name][:]) for name in STALENESS_ARRAYS}
    except Exception:  # noqa: BLE001 - already named per shard by _read_problems
        return []
    return compare_listing(listing, manifest, stored).problems()


def _unfinished(manifest: Manifest) -> list[str]:
    return [f"teacher {t.name} is {t.status}, not complete; finish it with `customkd extract --teacher {t.name} "
            "--into STORE` (the same options again)" for t in manifest.teachers if t.status != fs.STATUS_COMPLETE]


def verify_store(path: str, data: str | None = None, teacher_check: int = 0, weights: str | None = None,
                 teacher: str | None = None) -> list[str]:
    """Every problem found, named by array and shard; an empty list means the store can be trusted.

    Covers every array of every teacher (or of ``teacher`` alone): each storage object present
    (:func:`contract.store.chunk_problems`) and readable, non-finite features, the stored
    labels/domains/splits against the dataset listing; ``teacher_check`` views re-run per teacher."""
    if teacher_check < 0:
        raise UserError(f"--teacher-check must be >= 0 (0 = off), got {teacher_check}")
    opened = fs.Store.open(path)
    if opened.status != fs.STATUS_COMPLETE:
        return [f"status is {opened.status!r}, not complete; rerun the extract command to finish it"]
    group, manifest = opened.group, opened.manifest
    if teacher is not None:
        if manifest.teacher(teacher) is None:
            raise UserError(f"cache {where.display(path)} has no teacher {teacher!r}; its teachers: "
                            f"{', '.join(manifest.teacher_names)}")
        manifest = manifest.for_teachers((teacher,))
    listing = load_listing(data or manifest.data_spec)
    if len(listing) != manifest.n_samples:  # N is bounded by the listing before anything N-sized is read
        return compare_listing(listing, manifest).problems()
    problems = _unfinished(manifest) + store_problems(opened, manifest) + _dataset_problems(group, manifest, listing)
    for entry in manifest.teachers if teacher_check > 0 and not problems else ():
        cosine, detail = recheck_teacher(group, manifest, entry, teacher_check, weights, data)
        log.info("teacher check of %s: min cosine %.6f over %d views", entry.name, cosine, teacher_check)
        if detail:
            problems.append(detail)
        elif cosine < 0.999:
            problems.append(f"teacher {entry.name} re-run disagrees with cached features: min cosine {cosine:.5f} "
                            "< 0.999")
    return problems


def _weights_for(teacher: TeacherComponent, weights: str | None) -> str | None:
    source = teacher.weights
    if weights or source.startswith("hub:"):
        return weights
    if source == "random":
        return "random"
    if teacher.library == "timm_offline":
        return None  # the bundled file
    raise UserError(f"the store's teacher used weights {source}; pass --weights FILE to re-run it")


def recheck_teacher(group, manifest: Manifest, entry: TeacherEntry, n: int, weights: str | None,
                    data: str | None) -> tuple[float, str]:
    """Re-run teacher ``entry`` on ``n`` random stored views; (min cosine to the cache, problem or "")."""
    import torch

    from customkd.contract.views import replay
    from customkd.featcache.teachers import TAPS, create_teacher

    stored = entry.component
    teacher = create_teacher(stored.name, _weights_for(stored, weights), size=stored.size,
                             tap=stored.tap if stored.tap in TAPS else None)
    if teacher.identity()["weights_hash"] != stored.weights_hash:
        return 0.0, f"teacher {entry.name} weights differ from the store's (hash {teacher.identity()['weights_hash']} vs {stored.weights_hash})"
    listing = load_listing(data or manifest.data_spec)
    valid_rows = np.flatnonzero(np.asarray(group["valid"][:]))
    rng = np.random.default_rng(0)
    rows = rng.choice(valid_rows, size=min(n, len(valid_rows)), replace=False)
    views = rng.integers(0, manifest.n_views, size=len(rows))
    p = teacher.preprocess
    pixels = torch.stack([replay(listing.load_image(int(r)), group["views"][int(r), int(v)], p.size, p.mean, p.std,
                                 p.interpolation) for r, v in zip(rows, views, strict=True)])
    with torch.inference_mode():
        fresh = teacher(pixels).float()
    cached = torch.stack([torch.from_numpy(np.asarray(group[entry.array("features")][int(r), int(v)], dtype=np.float32))
                          for r, v in zip(rows, views, strict=True)])
    return float(torch.nn.functional.cosine_similarity(fresh, cached, dim=1).min()), ""


def store_problems(opened: fs.Store, manifest: Manifest | None = None) -> list[str]:
    """What ``cache verify`` finds in the store itself, without the dataset: every object present and whole, every
    shard readable, finite features and drawable views for valid samples, every shard done — of every teacher, or
    of those ``manifest`` (:meth:`Manifest.for_teachers`) keeps."""
    manifest = manifest or opened.manifest
    arrays = set(manifest.arrays())
    missing = [p for p in opened.chunk_problems() if p.split(":", 1)[0].removeprefix("array ") in arrays]
    return missing + _read_problems(opened.group, manifest)


def _refuse_problems(what: str, problems: list[str], advice: str) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"{what}: {problems[0]}{more}; {advice}")


def export_h5(path: str, h5_path: str) -> None:
    """Single-file HDF5 copy: the same arrays, the manifest as a JSON attribute. Refuses a store ``verify`` would
    fault; copies it shard by shard, under a temporary name renamed at the end, never over an existing file."""
    import h5py

    check_new_file(h5_path, "--h5", "store.h5")  # also refuses a file inside the store (or any store)
    opened = fs.Store.open_complete(path)
    group, manifest = opened.group, opened.manifest
    _refuse_problems(f"cache {where.display(path)} is damaged", store_problems(opened),
                     f"nothing was exported: run `customkd cache verify {path}`, then copy it again or re-extract it")
    _refuse_problems(f"cache {where.display(path)} is not finished", _unfinished(manifest),
                     "nothing was exported")
    with writing_new_file(h5_path, "--h5") as partial, h5py.File(partial, "w") as h5:
        for stored, (name, layout) in manifest.arrays().items():
            dataset = h5.create_dataset(stored, shape=layout.shape(name), dtype=ARRAYS[name].dtype)
            for shard in range(layout.n_shards):
                rows = shard if ARRAYS[name].dims == ("n_shards",) else layout.shard_rows(shard)
                dataset[rows] = np.asarray(group[stored][rows])
        h5.attrs[ATTRS_KEY] = json.dumps(manifest.to_attrs())


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n")[0][:160] or type(exc).__name__


def _replace_unfinished_import(path: str, manifest: Manifest) -> None:
    """Refuse an existing destination, unless it is an interrupted import of this same store (then start over)."""
    taken = storage_for(path).is_taken()
    if not (fs.store_exists(path) or taken):
        return
    try:
        stored = fs.Store.open(path).stored_manifest() if fs.store_exists(path) else None
    except UserError:
        stored = None
    same = stored is not None and not stored.fingerprint.diff(manifest.fingerprint)
    if not same or stored.status == fs.STATUS_COMPLETE:
        raise UserError(f"{where.display(path)} already exists; choose a new store path for the import")
    log.warning("%s holds an interrupted import of this store; importing it again", where.display(path))
    fs.delete_store(path)


def _h5_manifest(h5, h5_path: str) -> Manifest:
    """The manifest of an HDF5 export, checked as a store's is (the file is untrusted input too); its size is
    bounded before it is read."""
    attribute = h5.attrs.get_id(ATTRS_KEY) if ATTRS_KEY in h5.attrs else None
    if attribute is None or attribute.get_storage_size() > where.MAX_METADATA_BYTES:
        raise UserError(f"{h5_path} has no customkd manifest (attribute '{ATTRS_KEY}'); it was not written by "
                        "`customkd cache export`: export the store again")
    stored = h5.attrs[ATTRS_KEY]
    try:
        return Manifest.from_attrs(parse_json(stored))
    except (ManifestError, ValueError, TypeError) as exc:
        raise UserError(f"{h5_path} has a malformed manifest ({exc}); export the store again") from None


def _check_h5_arrays(h5, h5_path: str, manifest: Manifest) -> None:
    """Every array of the manifest is a plain dataset (no filters, no external or virtual storage) of its shape and
    dtype whose bytes are all in the file: a declared shape is bounded by what the file really holds, so a few
    kilobytes cannot stand for hundreds of megabytes of fill values. Every shard is flagged done."""
    import h5py

    for name, (spec_key, layout) in manifest.arrays().items():
        spec = ARRAYS[spec_key]
        dataset = h5.get(name)
        problem = None
        if not isinstance(dataset, h5py.Dataset):
            problem = "is missing" if dataset is None else "is not a dataset"
        elif dataset.shape != layout.shape(spec_key) or dataset.dtype != np.dtype(spec.dtype):
            problem = (f"is {dataset.dtype}{list(dataset.shape)}, the manifest implies "
                       f"{spec.dtype}{list(layout.shape(spec_key))}")
        else:
            plist = dataset.id.get_create_plist()
            nbytes = dataset.size * dataset.dtype.itemsize
            if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT) or \
                    plist.get_external_count() or plist.get_nfilters():
                problem = "is stored filtered, virtual or in external files, which `cache export` never writes"
            elif dataset.id.get_storage_size() < nbytes:
                problem = f"holds {dataset.id.get_storage_size()} bytes in the file for {nbytes} declared"
        if problem:
            raise UserError(f"{h5_path}: dataset '{name}' {problem}; it was not written by `customkd cache export` "
                            "(or was damaged): export the store again")
    flags = [name for name, (spec_key, _) in manifest.arrays().items() if ARRAYS[spec_key].dims == ("n_shards",)]
    if not all(np.asarray(h5[name][:]).all() for name in flags):
        raise UserError(f"{h5_path}: not every shard is flagged done; export the complete store again")


def _open_h5(h5_path: str):
    import h5py

    if not Path(h5_path).is_file():
        raise UserError(f"{h5_path} is not a file; pass the .h5 file written by `customkd cache export`")
    try:
        return h5py.File(h5_path, "r")
    except OSError as exc:
        raise UserError(f"{h5_path} is not an HDF5 file ({_first_line(exc)}); pass the file written by "
                        "`customkd cache export`") from None


def import_h5(h5_path: str, path: str) -> None:
    """Rebuild a Zarr store from an HDF5 export (same layout, attrs last). The file's manifest, datasets and values
    are checked as a store's are before anything is written, and the new store as ``verify`` checks one before it
    is marked complete; a store that fails is deleted again."""
    storage_for(path).check_new_place("cache import")
    with _open_h5(h5_path) as h5:
        manifest = _h5_manifest(h5, h5_path)
        if not manifest.writable:
            raise UserError(f"{h5_path} holds a store of schema version {manifest.schema_version}, which this "
                            "customkd reads but does not write; extract the store again with this customkd")
        _check_h5_arrays(h5, h5_path, manifest)
        _refuse_problems(f"{h5_path} holds a store `cache verify` would refuse", _read_problems(h5, manifest),
                         "nothing was imported: export the store again from a copy that verifies")
        _replace_unfinished_import(path, manifest)
        layout = manifest.layout
        per_sample = {name: h5[name][:] for name in LISTING_ARRAYS}
        group = fs.create_store(path, manifest, per_sample)
        for shard in range(layout.n_shards):
            rows = layout.shard_rows(shard)
            view_set = tuple(h5[name][rows] for name in VIEW_SET_ARRAYS)
            for teacher in manifest.teachers:
                fs.write_shard(group, layout, shard, teacher, h5[teacher.array("features")][rows],
                               view_set if teacher.slot == 0 else None)
    problems = _read_problems(group, manifest)
    if problems:
        fs.delete_store(path)
    _refuse_problems(f"{h5_path} holds a store `cache verify` would refuse", problems,
                     "nothing was imported: export the store again from a copy that verifies")
    for teacher in manifest.teachers:
        fs.mark_complete(group, teacher.name)
