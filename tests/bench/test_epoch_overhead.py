"""The arithmetic of ``epoch_overhead_fraction`` and ``teacher_size_cost_ratio`` on hand-checkable marks."""

import pytest

from bench import tables
from bench.config import profile
from bench.epoch_overhead import later_intervals, loader_overhead, overhead_fractions
from bench.teacher_size import teacher_sizes


def _marks(created: float, batches: list[float], ended: float) -> dict:
    return {"created": created, "batches": batches, "ended": ended}


def test_overhead_is_the_wait_until_the_second_batch_beyond_one_steady_step():
    # iter() at 0, batches at 2.0 (fill), 3.5 (a slow first step), then steps of 1.0, end one step later
    marks = _marks(0.0, [2.0, 3.5, 4.5, 5.5], 6.5)
    assert later_intervals(marks) == [1.0, 1.0]
    assert loader_overhead(marks, 1.0) == pytest.approx(2.5)  # 3.5 - 1.0: the fill plus the first step's excess
    assert loader_overhead(_marks(0.0, [0.0, 0.9, 1.9, 2.9], 3.9), 1.0) == 0.0  # noise below a step counts as none


def test_fraction_leaves_out_epoch_one_and_adds_train_and_eval_overhead():
    train = [_marks(0.0, [5.0, 9.0, 10.0, 11.0], 12.0),  # epoch 1: workers start, not measured
             _marks(0.0, [0.5, 1.5, 2.5, 3.5], 4.5),  # 0.5 s over one step of 1.0
             _marks(0.0, [0.0, 1.0, 2.0, 3.0], 4.0)]  # none
    evaluation = [_marks(0.0, [3.0, 4.0, 4.5, 5.0], 5.5),
                  _marks(0.0, [0.0, 1.0, 1.5, 2.0], 2.5),  # 0.5 s over one eval step of 0.5
                  _marks(0.0, [0.0, 0.5, 1.0, 1.5], 2.0)]
    raw = overhead_fractions(train, evaluation)
    assert raw["steady_train_step_s"] == 1.0 and raw["steady_eval_step_s"] == 0.5
    assert raw["fractions"] == pytest.approx([1.0 / 7.0, 0.0])
    assert raw["fraction"] == pytest.approx(0.5 / 7.0)
    assert raw["epoch_1_train_until_second_batch_s"] == 9.0


def test_new_metrics_have_their_targets():
    raw = {"epoch_overhead": {"persistent": {"fraction": 0.01}, "fresh": {"fraction": 0.2}},
           "teacher_size": {"ratio_default_vs_native": 0.15}}
    rows = {m["name"]: m for m in tables.build_metrics({**_minimal_raw(), **raw}, gpu=False)}
    assert rows["epoch_overhead_fraction"]["target"] == "<= 0.03" and rows["epoch_overhead_fraction"]["pass"]
    assert rows["epoch_overhead_fraction_fresh_workers"]["pass"] is None  # the old behaviour, for comparison
    assert rows["teacher_size_cost_ratio"]["target"] == "<= 0.2" and rows["teacher_size_cost_ratio"]["pass"]
    assert rows["add_teacher_efficiency"]["target"] == ">= 0.9" and rows["add_teacher_efficiency"]["pass"]
    gpu = {m["name"]: m for m in tables.build_metrics({**_minimal_raw(), **raw}, gpu=True)}
    assert gpu["add_teacher_efficiency"]["pass"] is None  # the issue sets the target on CPU only


def test_teacher_sizes_come_from_the_spec_unless_given():
    assert teacher_sizes(profile("cpu", quick=True)) == (32, 64)
    assert teacher_sizes(profile("cpu", quick=False)) == (224, 518)  # dinov2_vits: default 224, trained at 518


def _minimal_raw() -> dict:
    one = {"median": 1.0}
    return {"extraction": {"ratio_steady": one, "ratio_end_to_end": one}, "add_teacher": {"ratio_steady": one},
            "training": {"ideal_cached_vs_online": 2.0, "cached_samples_s": 1.0, "ratio_cached_vs_student": 1.0,
                         "ratio_cached_vs_online": 1.0, "ratio_customize_vs_kd_epoch": one},
            "memory": {"ratio_cached_vs_student": 1.0, "ratio_online_vs_student": 1.0},
            "store_read": {"ram_rows_s": one, "shard_block_rows_s": one, "random_row_rows_s": one},
            "storage": {"default": {"ratio_vs_2d": 1.0}, "compress": {"ratio_vs_2d": 1.0}}}
