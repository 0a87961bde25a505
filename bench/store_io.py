"""Store read throughput and bytes on disk per view.

Both use a synthetic store shaped like a real one (N, V, D of the config; the default layout of
``extract``; the manifest of the store the extraction section wrote, resized), created by
:func:`contract.store.create_store` and filled shard by shard as ``write_shard`` fills it. Its
features are Gaussian float16 with per-dimension scales, which compress about as badly as real
teacher features do.

Reads go through the trainer's own feature sources (:func:`trainer.features.open_features`: the
array in RAM, or :class:`~trainer.features.ShardedFeatures` streaming shard blocks in
``block_shuffle`` order), batch by batch with ``FeatureNorm`` as ``train_epoch`` asks for them, plus
single random rows read through zarr. The OS page cache is warm (the store was just written).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from bench.config import BenchConfig
from bench.timing import repeat
from customkd.contract.fingerprint import Fingerprint
from customkd.contract.schema import Layout, Manifest, TeacherEntry, make_fingerprint, shard_size_for

log = logging.getLogger(__name__)


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path`` (all arrays, chunk checksums, shard indexes, metadata)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def default_layout(n: int, v: int, d: int, compress: bool) -> Layout:
    """The layout ``extract`` would use for this shape (defaults read from ``ExtractConfig``)."""
    from customkd.contract.views import VIEW_PARAMS
    from customkd.featcache.config import ExtractConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ExtractConfig)}
    return Layout(n_samples=n, n_views=v, feature_dim=d, n_params=len(VIEW_PARAMS),
                  shard_size=shard_size_for(n, defaults["shard_size"], defaults["chunk_size"]),
                  chunk_size=defaults["chunk_size"], compress=compress)


def synthetic_manifest(manifest: Manifest, layout: Layout) -> Manifest:
    """``manifest`` (of a real store) resized to ``layout``: shape, shard count, its first teacher's D and the
    fingerprint's dataset size, views and layout agree with the synthetic arrays, so the store opens as any other."""
    fp = manifest.fingerprint
    fingerprint = Fingerprint.from_dict(make_fingerprint(
        {**fp.dataset.body, "n": layout.n_samples}, None, {**fp.augmentation.body, "views": layout.n_views},
        layout.to_dict()), with_teacher=False)
    teacher = TeacherEntry.make({**manifest.teachers[0].component.body, "feature_dim": layout.feature_dim},
                                layout.feature_dim, 0)
    return dataclasses.replace(manifest, fingerprint=fingerprint, n_shards=layout.n_shards, teachers=(teacher,),
                               shape=(layout.n_samples, layout.n_views))


def write_synthetic_store(path: Path, cfg: BenchConfig, manifest: Manifest, compress: bool,
                          dim: int | None = None) -> Path:
    """A complete store of ``store_rows × store_views × dim`` (default ``store_dim``) Gaussian features."""
    from customkd.contract import store as fs

    n, v, d = cfg.store_rows, cfg.store_views, dim or cfg.store_dim
    layout = default_layout(n, v, d, compress)
    rng = np.random.default_rng(0)
    per_sample = {"labels": (np.arange(n) % 4).astype(np.int32), "domain": np.zeros(n, np.int8),
                  "split": (np.arange(n) % 5 == 0).astype(np.int16),
                  "sample_key": rng.integers(0, 2**63, n, dtype=np.uint64)}
    synthetic = synthetic_manifest(manifest, layout)
    group = fs.create_store(path, synthetic, per_sample)
    scale = np.exp(rng.normal(0, 0.5, d)).astype(np.float32)
    for shard in range(layout.n_shards):
        rows = layout.shard_rows(shard)
        count = rows.stop - rows.start
        group["features_t0"][rows] = (rng.standard_normal((count, v, d), np.float32) * scale).astype(np.float16)
        group["views"][rows] = rng.random((count, v, layout.n_params), np.float32)
        group["content_hash"][rows] = rng.integers(0, 2**63, count, dtype=np.uint64)
        group["done"][shard] = group["teacher_done_t0"][shard] = 1
    fs.mark_complete(group, synthetic.teachers[0].name)
    return path


def bytes_per_view_ratio(path: Path, n: int, v: int, d: int) -> dict:
    total = directory_bytes(path)
    return {"bytes": total, "bytes_per_view": total / (n * v), "ratio_vs_2d": total / (n * v) / (2 * d)}


def measure_storage(cfg: BenchConfig, manifest: Manifest, extracted: Path, work: Path) -> dict:
    """Bytes on disk per view ÷ (2·D): the synthetic store, default and ``--compress`` (the metrics); the same
    at the benchmark teacher's D; and the small store the extraction section wrote."""
    n, v, d = cfg.store_rows, cfg.store_views, cfg.store_dim
    raw = {"shape": [n, v, d], "layout": default_layout(n, v, d, False).to_dict(),
           "feature_values": "Gaussian float16, per-dimension log-normal scale"}
    for name, compress in (("default", False), ("compress", True)):
        path = write_synthetic_store(work / f"synthetic-{name}.zarr", cfg, manifest, compress)
        raw[name] = bytes_per_view_ratio(path, n, v, d)
    (en, ev), ed = manifest.shape, manifest.teachers[0].feature_dim
    if ed != d:
        for name, compress in (("default", False), ("compress", True)):
            path = write_synthetic_store(work / f"synthetic-d{ed}-{name}.zarr", cfg, manifest, compress, ed)
            raw[f"at_teacher_dim_{name}"] = {**bytes_per_view_ratio(path, n, v, ed), "shape": [n, v, ed]}
            shutil.rmtree(path, ignore_errors=True)
    raw["extracted_store"] = {**bytes_per_view_ratio(extracted, en, ev, ed), "shape": [en, ev, ed],
                              "note": "the small store of the extraction section: fixed metadata weighs more"}
    return raw


def _served_rows_s(source, norm, rows: np.ndarray, views: np.ndarray, batch: int) -> float:
    """(row, view) features per second served as ``train_epoch`` asks: ``norm(source[rows, views])`` per batch."""
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        norm(source[rows[start : start + batch], views[start : start + batch]])
    return len(rows) / (time.perf_counter() - started)


def _raw_block_rows_s(array) -> float:
    """Store rows per second reading the ``features`` array shard block by shard block through zarr."""
    shard = array.shards[0] if array.shards else array.chunks[0]
    started = time.perf_counter()
    for start in range(0, array.shape[0], shard):
        np.asarray(array[start : start + shard])
    return array.shape[0] / (time.perf_counter() - started)


def _random_rows_s(array, reads: int, seed: int) -> float:
    """Store rows per second reading single random rows (what a naive per-sample reader would do)."""
    rows = np.random.default_rng(seed).integers(0, array.shape[0], reads)
    started = time.perf_counter()
    for row in rows.tolist():
        np.asarray(array[row])
    return reads / (time.perf_counter() - started)


def measure_reads(cfg: BenchConfig, store: Path) -> dict:
    """Rows/s of the trainer's two feature sources (``trainer.features.open_features``: RAM, and shard
    blocks in ``block_shuffle`` order) and of random single-row reads; medians after a warm-up."""
    from customkd.contract import store as fs
    from customkd.trainer.features import block_shuffle, open_features
    from customkd.trainer.loop import FeatureNorm

    group = fs.open_group(store, mode="r")
    n, v, _ = group["features_t0"].shape
    shard = fs.read_manifest(group, store).layout.shard_size
    valid = np.ones(n, dtype=bool)
    started = time.perf_counter()
    in_ram = open_features(group, ["features_t0"], "ram", shard, valid)
    load_s = time.perf_counter() - started
    flat = in_ram.reshape(-1, in_ram.shape[-1]).astype(np.float32)
    norm = FeatureNorm("standardize", stats=(flat.mean(0), flat.std(0)))
    rng = np.random.default_rng(1)
    shuffled, views = rng.permutation(n), rng.integers(0, v, n)
    blocked = block_shuffle(np.arange(n), shard, 0, 0)
    reps = max(cfg.repeats, 3)
    return {
        "store": store.name, "shape": [n, v, int(in_ram.shape[-1])], "batch_size": cfg.batch_size,
        "ram_load_s": load_s,
        "ram_rows_s": repeat(lambda: _served_rows_s(in_ram, norm, shuffled, views, cfg.batch_size), reps),
        "shard_block_rows_s": repeat(lambda: _served_rows_s(open_features(group, ["features_t0"], "stream", shard, valid), norm,
                                                            blocked, views, cfg.batch_size), reps),
        "zarr_block_rows_s": repeat(lambda: _raw_block_rows_s(group["features_t0"]), reps),
        "random_row_rows_s": repeat(lambda: _random_rows_s(group["features_t0"], cfg.random_reads, 2), reps),
        "units": "RAM and shard blocks: (row, view) features served per s incl. FeatureNorm, as train_epoch "
                 "asks for them; zarr blocks and random rows: store rows (all V views) per s",
    }
