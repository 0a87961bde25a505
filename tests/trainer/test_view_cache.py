"""The loader's cache of replayed views: shared by forked workers, the replay's own bytes, the same run."""

from __future__ import annotations

import json
import pickle

import numpy as np
import torch

from customkd.contract.views import replay_pil, to_uint8
from customkd.trainer import distill as distill_mod
from customkd.trainer import view_cache
from customkd.trainer.data import StudentViews, load_cached_data, make_loader
from customkd.trainer.view_cache import ViewCache
from tests.conftest import tiny_config
from tests.trainer.test_loaders import _config, _outcome


def _every_view(data) -> tuple[np.ndarray, np.ndarray]:
    rows, views = np.meshgrid(np.arange(len(data.views)), np.arange(data.views.shape[1]), indexing="ij")
    return rows.ravel(), views.ravel()


def _pixels(dataset: StudentViews, rows: np.ndarray, views: np.ndarray, workers: int) -> torch.Tensor:
    return torch.cat([batch[0] for batch in make_loader(dataset, rows, views, 8, workers)])


def test_views_replayed_by_forked_workers_are_read_back_by_any_worker_without_replaying(tiny_store, monkeypatch):
    data = load_cached_data(tiny_config(tiny_store))
    rows, views = _every_view(data)
    cache = ViewCache(rows, len(data.views), data.views.shape[1], 24)
    first = _pixels(StudentViews(data, 24, cache=cache), rows, views, workers=2)

    expected = torch.stack([to_uint8(replay_pil(data.listing.load_image(r), data.views[r, v], 24, "bilinear"))
                            for r, v in zip(rows, views, strict=True)])
    assert torch.equal(first, expected)  # the workers' replay, bytes for bytes
    assert cache.written.all()  # written in the workers, seen by this process
    assert np.array_equal(cache.pixels.reshape(-1, 3, 24, 24), expected.numpy())

    def no_image(self, index, data=None):
        raise AssertionError(f"row {index} was decoded again")

    monkeypatch.setattr(type(data.listing), "load_image", no_image)  # inherited by the workers forked next
    again = _pixels(StudentViews(data, 24, cache=cache), rows[::-1].copy(), views[::-1].copy(), workers=2)
    assert torch.equal(again, expected.flip(0))


def test_a_run_with_the_view_cache_equals_one_without_it(tiny_store, tmp_path):
    for name, cached in (("cached", True), ("replayed", False)):
        distill_mod.distill(_config(tiny_store, tmp_path / name, ssl="fixmatch", fixmatch_threshold=0.0,
                                    view_cache=cached))
    assert _outcome(tmp_path / "cached") == _outcome(tmp_path / "replayed")
    replayed = {name: json.loads((tmp_path / name / "config.json").read_text())["replay_used"]
                for name in ("cached", "replayed")}
    assert replayed["cached"]["mode"] == replayed["replayed"]["mode"] == "workers"
    assert replayed["cached"]["view_cache_mib"] > 0 and "view_cache_mib" not in replayed["replayed"]


def test_the_host_budget_is_shared_by_the_ranks_of_a_host(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    alone = view_cache.host_budget()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert view_cache.host_budget() == alone // 4


def test_views_over_the_memory_budget_are_not_cached(monkeypatch):
    monkeypatch.setattr(view_cache, "host_budget", lambda: 10 * 2 * 3 * 8 * 8 - 1)
    assert ViewCache.for_rows(np.arange(10), 20, 2, 8) is None
    monkeypatch.setattr(view_cache, "host_budget", lambda: 10 * 2 * 3 * 8 * 8)
    assert ViewCache.for_rows(np.arange(10), 20, 2, 8).nbytes == 10 * 2 * 3 * 8 * 8


def test_a_cache_sent_to_a_spawned_process_holds_nothing_and_rows_outside_it_are_replayed():
    cache = ViewCache(np.array([3, 5]), 8, 2, 4)
    pixels = torch.arange(48, dtype=torch.uint8).reshape(3, 4, 4)
    cache.put(5, 1, pixels)
    cache.put(4, 1, pixels)  # not a row of the cache: nothing kept
    assert torch.equal(cache.get(5, 1), pixels) and cache.get(5, 0) is None and cache.get(4, 1) is None
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.get(5, 1) is None
    copy.put(5, 0, pixels)  # nothing to write into, nothing raised
    assert cache.get(5, 0) is None




def test_a_cpu_run_with_every_view_cached_needs_no_workers_unless_asked(tiny_store, tmp_path):
    """Without ``--workers``: none on a CPU when the view cache holds every view, 2 otherwise; a given count wins
    (config.json records the count used)."""
    from customkd.trainer.distill import DEFAULT_WORKERS, resolve_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_workers(None, cpu, cached=True) == 0
    assert resolve_workers(None, cpu, cached=False) == resolve_workers(None, cuda, cached=True) == DEFAULT_WORKERS == 2
    assert resolve_workers(2, cpu, cached=True) == 2 and resolve_workers(0, cuda, cached=False) == 0
    for name, asked, used in (("auto", None, 0), ("two", 2, 2), ("no-cache", None, 2)):
        distill_mod.distill(tiny_config(tiny_store, tmp_path / name, workers=asked, view_cache=name != "no-cache",
                                        keep_checkpoint=True))
        assert json.loads((tmp_path / name / "config.json").read_text())["workers"] == used, name
    assert _outcome(tmp_path / "auto") == _outcome(tmp_path / "two") == _outcome(tmp_path / "no-cache")
