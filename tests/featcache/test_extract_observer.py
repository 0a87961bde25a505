"""extract(observe=...): a benchmark's clock sees every teacher batch, and the store is the same without it."""

from __future__ import annotations

from customkd.featcache.extract import ExtractConfig, extract
from tests.conftest import TINY_TEACHER, store_bytes


def test_the_observer_sees_every_teacher_batch_and_changes_nothing(tiny_folder, tiny_store, tmp_path):
    events: list[tuple[str, int]] = []
    result = extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(tmp_path / "s.zarr"),
                                   views=3, weights="random", workers=0, shard_size=8, chunk_size=4),
                     observe=lambda event, images: events.append((event, images)))
    starts = [images for event, images in events if event == "start"]
    assert [event for event, _ in events] == ["start", "end"] * len(starts)
    assert starts == [images for event, images in events if event == "end"]
    assert len(starts) > 1 and sum(starts) == result.shape[0] * result.shape[1]
    assert store_bytes(tmp_path / "s.zarr") == store_bytes(tiny_store)
