"""Loaders built once per run (persistent workers), no per-step host reads, same results."""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pytest
import torch

from customkd.common.errors import UserError
from customkd.trainer import assemble, run_folder
from customkd.trainer import distill as distill_mod
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import StudentViews, chunk_batches, loader_options, run_loader
from tests.conftest import tiny_config


def _config(store, out, **overrides) -> DistillConfig:
    return tiny_config(store, out, **{"method": "customkd", "setting": "ssl", "labels_per_class": 3, "epochs": 3,
                                      "workers": 2, "keep_checkpoint": True, **overrides})


def _record_worker_pids(monkeypatch, log_file) -> None:
    """Every item a loader worker replays appends 'pid view epoch' to ``log_file`` (forked workers inherit this)."""
    import os

    real = StudentViews.__getitem__

    def recording(self, item):
        with open(log_file, "a") as fh:
            fh.write(f"{os.getpid()} {item[1]} {item[2]}\n")
        return real(self, item)

    monkeypatch.setattr(StudentViews, "__getitem__", recording)


def _pids(log_file) -> tuple[dict[int, set[int]], set[int]]:
    """Training worker PIDs per epoch (views 1..V-1) and evaluation worker PIDs (view 0, every epoch)."""
    train: dict[int, set[int]] = {}
    evaluation: set[int] = set()
    for line in log_file.read_text().splitlines():
        pid, view, epoch = map(int, line.split())
        if view == 0:
            evaluation.add(pid)
        else:
            train.setdefault(epoch, set()).add(pid)
    return train, evaluation


def _outcome(run) -> dict:
    """What a run computed: per-epoch metrics without timings, weights, and the global RNG it left."""
    from safetensors.torch import load_file

    def untimed(record):
        if not isinstance(record, dict):
            return record
        return {k: untimed(v) for k, v in record.items() if "seconds" not in k and not k.endswith("per_s")}

    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    state = torch.load(run / run_folder.CHECKPOINT, weights_only=True)
    return {"epochs": [untimed(e) for e in epochs],
            "weights": {k: v.numpy().tobytes() for k, v in load_file(str(run / "student.safetensors")).items()},
            "rng": state["torch_rng"].numpy().tobytes()}


def test_workers_persist_across_epochs_and_results_equal_fresh_workers(tiny_store, tmp_path, monkeypatch):
    _record_worker_pids(monkeypatch, tmp_path / "persistent.log")
    distill_mod.distill(_config(tiny_store, tmp_path / "persistent", batch_size=4))  # two eval batches: both workers
    train, evaluation = _pids(tmp_path / "persistent.log")
    assert sorted(train) == [0, 1, 2]
    assert train[0] == train[1] == train[2] and len(train[0]) == 2  # the same two processes every epoch
    assert len(evaluation) == 2 and not evaluation & train[0]  # the eval loader's own two, kept too

    # non-persistent loaders start new workers for every epoch and every evaluation; the result must not change
    _record_worker_pids(monkeypatch, tmp_path / "fresh.log")
    monkeypatch.setattr(distill_mod, "run_loader", functools.partial(run_loader, persistent=False))
    distill_mod.distill(_config(tiny_store, tmp_path / "fresh", batch_size=4))
    train_fresh, evaluation_fresh = _pids(tmp_path / "fresh.log")
    assert len(set().union(*train_fresh.values())) == 6 and len(evaluation_fresh) == 6

    assert _outcome(tmp_path / "persistent") == _outcome(tmp_path / "fresh")


def test_fixmatch_strong_views_are_the_same_with_persistent_workers(tiny_store, tmp_path, monkeypatch):
    distill_mod.distill(_config(tiny_store, tmp_path / "persistent", ssl="fixmatch", fixmatch_threshold=0.0, epochs=2))
    monkeypatch.setattr(distill_mod, "run_loader", functools.partial(run_loader, persistent=False))
    distill_mod.distill(_config(tiny_store, tmp_path / "fresh", ssl="fixmatch", fixmatch_threshold=0.0, epochs=2))
    assert _outcome(tmp_path / "persistent") == _outcome(tmp_path / "fresh")


class _Items(torch.utils.data.Dataset):
    """(row, view, epoch) items as tensors; each load appends the row to ``log`` when given."""

    def __init__(self, log=None) -> None:
        self.log = log

    def __len__(self) -> int:
        return 100

    def __getitem__(self, item):
        if self.log is not None:
            with open(self.log, "a") as fh:
                fh.write(f"{item[0]}\n")
        return torch.tensor(item[0]), torch.tensor(item[1]), torch.tensor(item[2])


def _plan(epoch: int) -> list[list[tuple]]:
    rows = np.random.default_rng(epoch).permutation(20) + 100 * epoch
    return chunk_batches(rows, np.full(20, epoch), 6, epoch)


def test_a_run_loader_serves_each_epochs_batches_in_order_and_leaves_the_rng_as_fresh_loaders_do():
    torch.manual_seed(0)
    loader = run_loader(_Items(), _plan, range(4), workers=2).start()  # workers start before the first epoch
    served = []
    for epoch in range(4):
        served.append([b[0].tolist() for b in loader.epoch(epoch)])
        torch.rand(1)  # the run's own use of the RNG between epochs
    loader.shutdown()
    after_persistent = torch.get_rng_state()
    torch.manual_seed(0)
    fresh_loader, fresh = run_loader(_Items(), _plan, range(4), 2, persistent=False), []
    for epoch in range(4):
        fresh.append([b[0].tolist() for b in fresh_loader.epoch(epoch)])
        torch.rand(1)
    assert served == fresh == [[[item[0] for item in batch] for batch in _plan(e)] for e in range(4)]
    assert torch.equal(after_persistent, torch.get_rng_state())


def test_the_workers_load_the_next_epoch_before_it_starts(tmp_path):
    log = tmp_path / "loaded.txt"
    plan = lambda epoch: chunk_batches(np.arange(8) + 100 * epoch, np.zeros(8, np.int64), 1, epoch)  # noqa: E731
    loader = run_loader(_Items(log), plan, range(2), workers=2).start()
    assert [b[0].tolist() for b in loader.epoch(0)] == [[row] for row in range(8)]
    for _ in range(600):  # wait (up to a minute on a loaded machine) for the workers, without iterating epoch 1
        if any(int(row) >= 100 for row in log.read_text().split()):
            break
        time.sleep(0.1)
    assert any(int(row) >= 100 for row in log.read_text().split()), "nothing of epoch 1 loaded before it started"
    assert [b[0].tolist() for b in loader.epoch(1)] == [[100 + row] for row in range(8)]
    with pytest.raises(RuntimeError, match="epoch 0 iterated, epoch 2 expected"):
        list(loader.epoch(0))
    loader.shutdown()


def test_loader_options_pin_only_for_cuda_and_persist_only_with_workers():
    assert loader_options(0) == {"num_workers": 0, "pin_memory": False}
    assert loader_options(2, "cuda") == {"num_workers": 2, "pin_memory": True, "persistent_workers": True,
                                         "prefetch_factor": 2}
    assert loader_options(1, "cpu", persistent=False)["persistent_workers"] is False
    assert loader_options(1)["prefetch_factor"] * 1 >= 4  # at least four batches queued


def test_a_nan_after_the_first_step_names_its_term_and_step(tiny_store, tmp_path, monkeypatch):
    from customkd.trainer.methods import kd

    real, calls = kd.soft_target_loss, {"n": 0}

    def nan_from_the_second_call(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] >= 2 else 1.0)

    monkeypatch.setattr(kd, "soft_target_loss", nan_from_the_second_call)
    with pytest.raises(UserError, match=r"loss term 'kd' became nan in epoch 1 \(step 2\)"):
        distill_mod.distill(_config(tiny_store, tmp_path / "nan", method="kd", workers=0, epochs=1))


def test_the_loop_reads_no_scalar_per_step(tiny_store, tmp_path, monkeypatch):
    """``float(t)`` / ``t.item()`` on a GPU tensor waits for the GPU: the loop's own code (KD epoch,
    customization epoch, evaluation) reads loss parts and predictions in bulk instead."""
    import sys

    from customkd.common.distributed import DistEnv

    cfg = _config(tiny_store, tmp_path / "run", workers=0, customize_warmup=0)  # customizes before KD epoch 1
    session = distill_mod.setup(cfg, DistEnv(), torch.device("cpu"))
    dataset = StudentViews(session.data, cfg.image_size)
    held_out = assemble.eval_batches(cfg, session.inputs, session.env)
    loaders = (run_loader(dataset, lambda epoch: assemble.epoch_plan(cfg, session.inputs, epoch, session.env).batches,
                          range(1), 0),
               run_loader(dataset, lambda epoch: held_out, range(1), 0))
    reads = []

    def counting(real):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(("trainer/loop.py", "trainer/distill.py", "trainer/assemble.py")):
                reads.append(caller)
            return real(tensor, *args, **kwargs)
        return read

    for name in ("__float__", "item"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    try:
        record = distill_mod.run_epoch(session, 0, *loaders)
    finally:
        run_folder.release_locks()
    assert reads == []
    assert {"customize", "train", "eval"} <= set(record) and math.isfinite(record["train"]["loss"])
    assert math.isfinite(record["customize"]["loss"]) and record["train"]["samples"] == len(session.split.train)


def test_a_killed_run_with_persistent_workers_resumes_to_the_same_result(tiny_store, tmp_path, monkeypatch):
    distill_mod.distill(_config(tiny_store, tmp_path / "ref"))
    real_save, saves = run_folder.save_checkpoint, {"n": 0}

    def save_then_die(run, state):
        real_save(run, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise KeyboardInterrupt  # killed after epoch 1's checkpoint, with epoch 2's batches loading

    monkeypatch.setattr(run_folder, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        distill_mod.distill(_config(tiny_store, tmp_path / "killed"))
    distill_mod.distill(_config(tiny_store, tmp_path / "killed", resume=True))
    assert _outcome(tmp_path / "killed") == _outcome(tmp_path / "ref")
