"""Cached features + images for the student: open the store, check it, split it, load views.

The trainer opens the store once (:class:`contract.store.Store`), reads it as its teachers' reader
(:meth:`contract.store.Store.reader`), checks it against the dataset with the contract's one staleness check
(:func:`contract.listing.compare_listing`) and replays views through
:mod:`contract.views`; it never touches teacher code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from customkd.common.errors import UserError, printable
from customkd.contract import store as fs
from customkd.contract.datasets import DatasetListing, load_listing
from customkd.contract.listing import ListingDiff
from customkd.contract.schema import STALENESS_ARRAYS, Manifest, spec_name
from customkd.contract.values import block_problem, count_problem
from customkd.contract.views import replay_pil, to_uint8, view_seed
from customkd.trainer.config import DistillConfig
from customkd.trainer.features import ConcatFeatures, ShardedFeatures, open_features
from customkd.trainer.view_cache import ViewCache

log = logging.getLogger(__name__)


@dataclass
class CachedData:
    """Everything of the store the trainer needs, in RAM. Shapes: features ``[N, V, D]``; ``manifest`` is the
    store's as the chosen teachers' reader sees it (:meth:`contract.store.Store.reader`)."""

    features: np.ndarray | ShardedFeatures | ConcatFeatures  # float16 [N, V, D], indexed as features[rows, views]
    valid: np.ndarray  # bool [N], False for images skipped as unreadable at extraction
    views: np.ndarray  # float32 [N, V, P]
    labels: np.ndarray  # int64 [N]
    domain: np.ndarray  # int64 [N]
    split: np.ndarray  # int64 [N]
    manifest: Manifest
    listing: DatasetListing
    content_hash: np.ndarray | None = None  # uint64 [N], the hash of each image's bytes read at extraction

    @property
    def n_views(self) -> int:
        return self.features.shape[1]

    @property
    def shard_size(self) -> int:
        return self.manifest.layout.shard_size

    @property
    def streaming(self) -> bool:
        return isinstance(self.features, (ShardedFeatures, ConcatFeatures))

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)


def _rebuild_hint(cache: str) -> str:
    return f"rebuild it in place with the same `customkd extract ... --out {cache} --overwrite`"


def check_listing(diff: ListingDiff, allow_stale: bool, cache: str = "") -> None:
    """Refuse a store whose rows no longer mean the dataset's images, whose stored labels, domains or splits
    differ from the listing, or (unless ``allow_stale``) whose images changed since extraction."""
    rows = None
    if diff.count_differs:
        rows = f"{diff.listing_rows} images on disk vs {diff.stored_rows} in the store (images added or removed)"
    elif diff.moved:
        rows = f"{len(diff.moved)} sample paths differ, e.g. {diff.moved[0][1]}"
    if rows:  # no --allow-stale can make such a store usable
        raise UserError(f"cache does not match the dataset (fingerprint component 'dataset': {rows}); "
                        f"{_rebuild_hint(cache or 'CACHE')}")
    differ = [*diff.names, *diff.relabeled]
    if differ:
        raise UserError(f"cache {cache} does not match its dataset: {differ[0]}; run `customkd cache verify "
                        f"{cache}`, then copy it again or re-extract it")
    stale = diff.stale
    problem = (f"{len(stale)} image(s) changed since extraction, e.g. {stale[0][1]}" if stale else
               "file sizes, labels or splits differ" if diff.listing_hash_differs else None)
    if problem:
        message = (f"cache does not match the dataset (fingerprint component 'dataset': {problem}); "
                   f"{_rebuild_hint(cache or 'CACHE')}, or pass --allow-stale to train anyway")
        if not allow_stale:
            raise UserError(message)
        log.warning("%s — continuing because --allow-stale was given", printable(message))  # quotes a sample path


def check_expected_fingerprint(manifest: Manifest, expected: dict[str, str], cache: str) -> None:
    """Refuse a store whose fingerprint components differ from the ones the user (or a resumed run) pinned."""
    stored = manifest.fingerprint.hashes()
    for name, value in expected.items():
        if not stored.get(name, "").startswith(value):
            raise UserError(f"cache {cache} differs in fingerprint component '{name}' ({stored.get(name, '')[:8]} "
                            f"instead of {value[:8]}): it was re-extracted with another {name}; use the matching "
                            "store or drop the pin")


PER_SAMPLE_NAMES = (*STALENESS_ARRAYS, "views")


def _read_per_sample(store: fs.Store, cache: str) -> dict[str, np.ndarray]:
    """Every per-sample array, after checking that each of the store's objects is there."""
    missing = store.chunk_problems()
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"cache {cache} is damaged: {missing[0]}{more}; run `customkd cache verify {cache}`, then "
                        "copy it again or re-extract it")
    try:
        return {name: np.asarray(store.group[name][:]) for name in PER_SAMPLE_NAMES}
    except Exception as exc:  # noqa: BLE001 - a checksum mismatch surfaces as a codec error
        raise UserError(f"cache {cache} is damaged ({type(exc).__name__}); run `customkd cache verify "
                        f"{cache}` to locate the shard, then re-extract") from None


def _check_values(store: fs.Store, arrays: dict[str, np.ndarray], manifest: Manifest, cache: str) -> None:
    """Refuse stored values outside their legal range, shard by shard (:func:`contract.values.block_problem`): the
    per-sample ``arrays`` read, the completion flags of the view set and of the reader's teachers, and the
    manifest's count of invalid samples. A valid sample's features are checked as they are read
    (:func:`open_features`)."""
    layout, valid = manifest.layout, arrays["valid"].astype(bool)
    flags = {name: np.asarray(store.group[name][:]) for name in ("done", *(t.array("teacher_done")
                                                                        for t in manifest.teachers))}
    problem = count_problem(arrays["valid"], manifest)
    for shard in range(layout.n_shards):
        if problem:
            break
        rows, span = layout.shard_rows(shard), f"shard {shard} ({layout.shard_span(shard)})"
        blocks = [(name, values[rows], valid[rows], rows) for name, values in arrays.items()]
        blocks += [(name, values[shard], None, shard) for name, values in flags.items()]
        problem = next(filter(None, (block_problem(spec_name(name), block, block_valid, where, manifest,
                                                   f"array {name}: {span}")
                                     for name, block, block_valid, where in blocks)), None)
    if problem:
        raise UserError(f"cache {cache}: {problem}; run `customkd cache verify {cache}`, then re-extract it")


def load_cached_data(cfg: DistillConfig, expected: dict[str, str] | None = None) -> CachedData:
    """Open, check and load a complete store; sizes come from the validated manifest and the dataset agreeing.

    Refuses a damaged store (missing or unreadable objects of any array), stored labels, domains or
    splits that differ from the dataset listing, and (streaming) a store replaced while it is read."""
    store = fs.Store.open_complete(cfg.cache)
    reader = store.reader(cfg.teachers)
    manifest = reader.manifest
    check_expected_fingerprint(manifest, {**cfg.expected_hashes, **(expected or {})}, cfg.cache)
    listing = load_listing(cfg.data or manifest.data_spec)
    counted = reader.compare_listing(listing)  # before anything of size N is read
    if counted.count_differs:
        check_listing(counted, cfg.allow_stale, cfg.cache)
    arrays = _read_per_sample(store, cfg.cache)
    check_listing(reader.compare_listing(listing, arrays), cfg.allow_stale, cfg.cache)
    valid = arrays["valid"].astype(bool)
    _check_values(store, arrays, manifest, cfg.cache)
    features = open_features(store.group, reader.feature_arrays, cfg.features, manifest.layout.shard_size, valid,
                             still_same=reader.check_same)
    reader.check_same()
    return CachedData(
        features=features,
        valid=valid,
        views=arrays["views"],
        labels=arrays["labels"].astype(np.int64),
        domain=arrays["domain"].astype(np.int64),
        split=arrays["split"].astype(np.int64),
        content_hash=arrays["content_hash"],
        manifest=manifest,
        listing=listing,
    )


@dataclass(frozen=True)
class Split:
    """Row indices of the setting. ``train_labels[i]`` is -1 where training must not see a label."""

    train: np.ndarray  # [T] rows used for training
    train_labels: np.ndarray  # [T] label or -1
    eval: np.ndarray  # [E] held-out rows
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [W] validation rows (--val-fraction)

    @property
    def n_labeled(self) -> int:
        return int((self.train_labels >= 0).sum())

    @property
    def rows(self) -> np.ndarray:
        """Every row the run reads: training, held-out and validation ``[T + E + W]``."""
        return np.concatenate([self.train, self.eval, self.val])


def _domain_ids(names: tuple[str, ...], domains: tuple[str, ...]) -> list[int]:
    unknown = [n for n in names if n not in domains]
    if unknown:
        raise UserError(f"unknown domain {unknown[0]!r}; this cache has domains: {', '.join(domains)}")
    return [domains.index(n) for n in names]


def select_labeled(labels: np.ndarray, cfg: DistillConfig) -> np.ndarray:
    """Boolean mask ``[T]`` of the SSL label budget, chosen per class by ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, 1234])
    mask = np.zeros(len(labels), dtype=bool)
    fraction = cfg.label_fraction
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n = cfg.labels_per_class if cfg.labels_per_class is not None else max(1, round(fraction * len(members)))
        mask[members[: min(n, len(members))]] = True
    return mask


DEV_FRACTION = 0.2
DEV_SEED = 20261206  # fixed: every run of every method is scored on the same development rows
VAL_STREAM = 4321  # the validation rows draw from default_rng([seed, VAL_STREAM]), apart from the label budget's


def carve(labels: np.ndarray, fraction: float, rng: np.random.Generator, at_least_one: bool = False) -> np.ndarray:
    """Boolean mask ``[n]``: ``fraction`` of each class's rows (``labels[i] >= 0``; -1 rows are never chosen), a
    seeded random choice per class in class order.

    With ``at_least_one`` every class with two rows or more gives at least one and keeps at least one; otherwise
    a class gives ``round(fraction * members)`` rows (none for a class that small)."""
    chosen = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        n = int(round(fraction * len(members)))
        if at_least_one and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        chosen[members[:n]] = True
    return chosen


def carve_dev(train: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask ``[N]``: ``DEV_FRACTION`` of each class's labeled training rows, a fixed seeded choice.

    ``--eval-split dev`` evaluates on these rows and leaves them out of training entirely (labels and
    images), so settings are chosen without the held-out test rows."""
    return carve(np.where(train, labels, -1), DEV_FRACTION, np.random.default_rng(DEV_SEED))


def carve_val(split: Split, cfg: DistillConfig) -> Split:
    """``split`` with ``--val-fraction`` of each class's labeled training rows (the labels the setting gives
    training, after any label budget) moved to ``val``: out of training entirely (labels and images), chosen
    by the run's seed. Epochs are scored on them and the best epoch's student is kept, so the test rows are
    evaluated once, at the end."""
    if cfg.val_fraction == 0:
        return split
    val = carve(split.train_labels, cfg.val_fraction, np.random.default_rng([cfg.seed, VAL_STREAM]), at_least_one=True)
    if not val.any():
        raise UserError(f"--val-fraction {cfg.val_fraction:g} leaves no validation rows: no class has two labeled "
                        "training samples; label more samples or drop --val-fraction")
    return Split(split.train[~val], split.train_labels[~val], split.eval, split.train[val])


def without_copies_of(train: np.ndarray, held_out: np.ndarray, data: CachedData) -> np.ndarray:
    """The training mask ``[N]`` less every row whose image bytes equal a held-out row's (``content_hash``), with a
    warning: a copy of an evaluation image (an ``--unlabeled`` folder holding copies of the labeled images, one
    file saved twice) would train on what is evaluated."""
    if data.content_hash is None:
        return train
    copies = train & np.isin(data.content_hash, data.content_hash[held_out])
    if copies.any():
        log.warning("%d training images are byte-identical copies of held-out images (e.g. %s); they are left out "
                    "of training so that nothing evaluated is trained on", int(copies.sum()),
                    printable(data.listing.samples[int(np.flatnonzero(copies)[0])].relpath))
    return train & ~copies


def make_split(cfg: DistillConfig, data: CachedData) -> Split:
    """Training rows with their labels (-1 = unlabeled) and held-out rows of the setting.

    Rows stored unlabeled (``extract --unlabeled``) are unlabeled training rows in ``ssl`` and ``uda`` and left
    out of ``supervised``. Every stored label is used unless ``ssl`` is given a label budget
    (``--labels-per-class`` / ``--label-fraction``), which simulates scarce labels for benchmarks."""
    train = (data.split == 0) & data.valid
    test = (data.split == 1) & data.valid & (data.labels >= 0)
    if cfg.eval_split == "dev":
        test = carve_dev(train, data.labels)
        train &= ~test
    train = without_copies_of(train, test, data)
    stored_unlabeled = bool((data.labels[train] < 0).any())
    if cfg.setting == "uda":
        both = sorted(set(cfg.source) & set(cfg.target))
        if both:
            raise UserError(f"domain {both[0]!r} is both --source and --target; the target must stay unlabeled, "
                            "so name different domains")
        source = np.isin(data.domain, _domain_ids(cfg.source, data.manifest.domains))
        target = np.isin(data.domain, _domain_ids(cfg.target, data.manifest.domains))
        rows = np.flatnonzero(train & (source | target))
        labels = np.where(source[rows], data.labels[rows], -1)
        eval_rows = np.flatnonzero(test & target)
        if len(eval_rows) == 0 and stored_unlabeled:  # an unlabeled target with no labeled evaluation set
            log.warning("the target domain has no labeled held-out images: evaluating on the source's held-out "
                        "images; add a labeled target evaluation set to measure the target")
            eval_rows = np.flatnonzero(test & source)
    else:
        rows = np.flatnonzero(train & (data.labels >= 0 if cfg.setting == "supervised" else True))
        labels = data.labels[rows].copy()
        if cfg.label_budget:
            labeled = select_labeled(labels, cfg)
            if labeled.all():
                raise UserError("the label budget (--labels-per-class / --label-fraction) labels every training sample, "
                                "leaving none unlabeled; choose a smaller budget, or --setting supervised")
            labels[~labeled] = -1
        eval_rows = np.flatnonzero(test)
    if len(eval_rows) == 0 or (labels >= 0).sum() == 0:
        raise UserError("this setting leaves no labeled training samples or no held-out samples; check the split")
    return carve_val(Split(rows, labels, eval_rows), cfg)


def epoch_views(rows: np.ndarray, n_views: int, epoch: int, mode: str, seed: int) -> np.ndarray:
    """View index ``[T]`` each row uses this epoch; random views 1..V-1 (view 0 if V == 1)."""
    if n_views == 1:
        return np.zeros(len(rows), dtype=np.int64)
    if mode == "cycle":
        return 1 + (rows + epoch) % (n_views - 1)
    return np.random.default_rng([seed, epoch, 77]).integers(1, n_views, size=len(rows))


def epoch_order(n: int, epoch: int, seed: int) -> np.ndarray:
    """Shuffled positions for an epoch, a pure function of (seed, epoch) so resume replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class StudentViews(torch.utils.data.Dataset):
    """(row, view[, epoch]) → the stored view replayed at the student's resolution, uint8 ``[3, S, S]``.

    The trainer normalises after the copy to the device (:class:`trainer.loop.PixelNorm`): bytes are a quarter of
    float32's size to collate, pin and copy. With ``strong_seed`` set (FixMatch), it also returns a RandAugment-ed
    copy of the same crop, seeded by (seed, row, epoch) so CPU runs repeat exactly. With a ``cache``
    (:class:`trainer.view_cache.ViewCache`) a view replayed once is read from it afterwards: the same bytes."""

    def __init__(self, data: CachedData, size: int, interpolation: str = "bilinear",
                 strong_seed: int | None = None, cache: ViewCache | None = None) -> None:
        self.listing, self.views = data.listing, data.views
        self.size, self.interpolation = size, interpolation
        self.strong_seed, self.cache = strong_seed, cache

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, item: tuple[int, ...]):
        row, view = item[0], item[1]
        pixels = self.cache.get(row, view) if self.cache is not None else None
        if pixels is None:
            pixels = to_uint8(replay_pil(self.listing.load_image(row), self.views[row, view], self.size,
                                         self.interpolation))
            if self.cache is not None:
                self.cache.put(row, view, pixels)
        if self.strong_seed is None:
            return pixels, row, view
        crop = Image.fromarray(pixels.permute(1, 2, 0).numpy())  # the replayed RGB crop, from its own bytes
        return pixels, row, view, to_uint8(self._strong(crop, row, item[2] if len(item) > 2 else 0))

    def _strong(self, crop, row: int, epoch: int):
        from torchvision.transforms import RandAugment

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.strong_seed, row, 1_000_000 + epoch) % 2**63)
            return RandAugment(num_ops=2, magnitude=10)(crop)


class RunBatches(torch.utils.data.Sampler):
    """The batch sampler of a loader kept for the whole run: every epoch's batches, one epoch after another.

    ``plan(epoch)`` gives an epoch's batches of (row, view, epoch) items, a pure function of the epoch,
    so the next epoch's batches can be handed out before that epoch starts. The DataLoader iterates
    this in the main process as it gives batches to its workers."""

    def __init__(self, plan: Callable[[int], list[list[tuple]]], epochs: range) -> None:
        self.plan, self.epochs = plan, epochs
        self._plans: dict[int, list[list[tuple]]] = {}

    def batches(self, epoch: int) -> list[list[tuple]]:
        """``plan(epoch)``, computed once (the two latest epochs are kept)."""
        if epoch not in self._plans:
            self._plans = {e: b for e, b in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = self.plan(epoch)
        return self._plans[epoch]

    def __iter__(self):
        for epoch in self.epochs:
            yield from self.batches(epoch)


class EpochBatches:
    """One epoch of a :class:`RunLoader`: iterate it for the epoch's batches; ``batch_sampler`` lists them."""

    def __init__(self, loader: RunLoader, epoch: int) -> None:
        self.loader, self.epoch = loader, epoch
        self.batch_sampler = loader.batch_sampler.batches(epoch)

    def __iter__(self):
        return self.loader.iterate(self.epoch, len(self.batch_sampler))


class RunLoader(torch.utils.data.DataLoader):
    """A DataLoader built once per purpose (training, evaluation) for the run's epochs; :meth:`epoch`
    is one epoch's batches, in order.

    With persistent workers one iterator serves the whole run: once an epoch's last batches are handed
    to the workers, they go on with the next epoch's first ones, so the pipeline never drains and
    refills at an epoch boundary and evaluation overlaps the next epoch's loading (what timm's
    ``MultiEpochsDataLoader`` does). Otherwise (``workers=0``, or ``persistent=False``: workers forked
    again for each epoch) every epoch iterates a new iterator over that epoch's batches.

    Every new iterator of a plain DataLoader draws its workers' base seed from the global torch RNG.
    With the one iterator that draw is made at the start of every epoch instead, and the iterator's
    own draw undone, so the global RNG — and with it every result — stays exactly what one new loader
    per epoch gave. The workers seed each item's augmentation themselves."""

    def __init__(self, dataset: torch.utils.data.Dataset, plan: Callable[[int], list[list[tuple]]], epochs: range,
                 **options) -> None:
        super().__init__(dataset, batch_sampler=RunBatches(plan, epochs), **options)
        self._run_iterator = None  # the one iterator, with persistent workers
        self._next_epoch = epochs.start

    @property
    def keeps_workers(self) -> bool:
        return self.persistent_workers and self.num_workers > 0

    def start(self) -> RunLoader:
        """Start the persistent workers now: they begin loading the first epoch's batches."""
        if self.keeps_workers and self._run_iterator is None:
            with torch.random.fork_rng(devices=[]):  # the seed draws belong to the epochs
                self._run_iterator = super().__iter__()
        return self

    def epoch(self, epoch: int) -> EpochBatches:
        return EpochBatches(self, epoch)

    def iterate(self, epoch: int, count: int):
        """The ``count`` batches of ``epoch`` (epochs are iterated in order, once each)."""
        if epoch != self._next_epoch:
            raise RuntimeError(f"epoch {epoch} iterated, epoch {self._next_epoch} expected")
        self._next_epoch += 1
        if not self.keeps_workers:
            self.batch_sampler.epochs = range(epoch, epoch + 1)
            return super().__iter__()
        self.start()
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # a new iterator's seed draw
        run = self._run_iterator
        return (next(run) for _ in range(count))

    def shutdown(self) -> None:
        """Stop the persistent workers now rather than when the loader is garbage-collected."""
        if self._run_iterator is not None:
            self._run_iterator._shutdown_workers()
            self._run_iterator = self._iterator = None


def loader_options(workers: int, device: torch.device | str = "cpu", persistent: bool = True) -> dict:
    """DataLoader options: persistent workers and a queue of at least 4 batches when ``workers > 0``,
    pinned pages when the batches go to a GPU (so ``.to(device, non_blocking=True)`` overlaps)."""
    options: dict = {"num_workers": workers, "pin_memory": torch.device(device).type == "cuda"}
    if workers > 0:
        options.update(persistent_workers=persistent, prefetch_factor=max(2, -(-4 // workers)))
    return options


def run_loader(dataset: StudentViews, plan: Callable[[int], list[list[tuple]]], epochs: range, workers: int,
               device: torch.device | str = "cpu", persistent: bool = True) -> RunLoader:
    """One loader for the run's ``epochs``; ``plan(epoch)`` gives an epoch's batches.

    ``persistent=False`` forks new workers for every epoch (the bench measures both). Batches, order and augmentation seeds do not depend on it."""
    return RunLoader(dataset, plan, epochs, **loader_options(workers, device, persistent))


def chunk_batches(rows: np.ndarray, views: np.ndarray, batch_size: int, epoch: int = 0) -> list[list[tuple]]:
    """Consecutive batches of (row, view, epoch) items in the given order."""
    items = list(zip(rows.tolist(), views.tolist(), [epoch] * len(rows), strict=True))
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def make_loader(dataset: StudentViews, rows: np.ndarray, views: np.ndarray, batch_size: int, workers: int,
                epoch: int = 0, device: torch.device | str = "cpu"):
    """A one-pass loader of (uint8 pixels ``[B,3,S,S]``, rows ``[B]``, views ``[B]``[, strong pixels]) in the given
    order."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=chunk_batches(rows, views, batch_size, epoch),
                                       **loader_options(workers, device, persistent=False))
