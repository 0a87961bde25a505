"""Smoke test of ``make bench``: the quick profile end to end; structure only, never timings."""

import json
import math
import subprocess
import sys

from bench import tables
from tests.conftest import ROOT

METRICS = {
    "extraction_efficiency", "extraction_efficiency_end_to_end", "add_teacher_efficiency",
    "cached_kd_vs_student_throughput",
    "cached_vs_online_throughput", "online_ideal_ratio", "peak_memory_cached_vs_student",
    "peak_memory_online_vs_student", "customization_vs_kd_epoch", "reader_ram_vs_student",
    "reader_shard_blocks_vs_student", "reader_random_row_vs_student", "storage_default_vs_2d",
    "storage_compress_vs_2d", "allocator_tunables_speedup", "epoch_overhead_fraction",
    "epoch_overhead_fraction_fresh_workers", "teacher_size_cost_ratio",
    "student_step_vs_synthetic", "replaying_student_step_vs_synthetic", "synthetic_vs_timm_train",
    "loader_capacity_vs_synthetic",
    "device_replay_fast_vs_workers_loader", "device_replay_exact_vs_workers_loader", "channels_last_vs_nchw_train",
    "one_worker_one_thread_vs_default", "two_workers_vs_default",
}
RAW_SECTIONS = {"config", "extraction", "add_teacher", "training", "limits", "epoch_overhead", "teacher_size", "memory", "allocator", "storage",
                "store_read", "wall_seconds"}


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, float):
        yield tree


def test_quick_bench_writes_results_table_and_docs(tmp_path):
    results, docs = tmp_path / "results", tmp_path / "benchmarks.md"
    docs.write_text(f"# hand-written intro\n\n{tables.DOCS_BEGIN}\nSTALE-BLOCK-9f3\n{tables.DOCS_END}\n\nhand-written notes\n")
    run = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--results-dir", str(results),
                          "--docs", str(docs)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    result = json.loads((results / "latest.json").read_text())
    assert set(result) == {"machine", "versions", "metrics", "raw"}
    assert {m["name"] for m in result["metrics"]} == METRICS
    for m in result["metrics"]:
        assert set(m) == {"name", "value", "target", "pass"}
        assert math.isfinite(m["value"]) and isinstance(m["target"], str)
        assert m["pass"] in (True, False, None)
    assert RAW_SECTIONS <= set(result["raw"])
    assert all(math.isfinite(x) for x in _numbers(result["raw"]))
    assert result["versions"]["torch"] and result["machine"]["cpu_count"]
    assert len(list(results.glob("*.json"))) == 2  # the stamped file and latest.json
    assert not list((results / "tmp").iterdir())  # the work directory is removed

    assert "extraction_efficiency" in run.stdout and "measured" in run.stdout
    page = docs.read_text()
    assert page.startswith("# hand-written intro") and page.rstrip().endswith("hand-written notes")
    assert "STALE-BLOCK-9f3" not in page and all(f"`{name}`" in page for name in METRICS)


def test_the_limit_metrics_compare_against_the_synthetic_step_with_the_issues_targets():
    limits = {"ratio_student_step_vs_synthetic": 0.95, "ratio_replaying_vs_synthetic": 0.8, "ratio_synthetic_vs_plain": 0.85,
              "ratio_workers_loader_vs_synthetic": 1.2, "ratio_replay_fast_vs_workers_loader": 3.0,
              "ratio_replay_exact_vs_workers_loader": 1.0, "ratio_channels_last_vs_nchw": 1.4}
    cpu = {m["name"]: m for m in tables.limit_metrics(limits, gpu=False)}
    gpu = {m["name"]: m for m in tables.limit_metrics(limits, gpu=True)}
    assert cpu["student_step_vs_synthetic"]["pass"] is True and cpu["synthetic_vs_timm_train"]["pass"] is False
    assert cpu["replaying_student_step_vs_synthetic"]["pass"] is None  # information: the first epoch's loader
    assert cpu["loader_capacity_vs_synthetic"]["pass"] is None and gpu["loader_capacity_vs_synthetic"]["pass"] is False
    assert gpu["loader_capacity_vs_synthetic"]["target"] == ">= 1.5"
    assert "two_workers_vs_default" not in cpu  # measured only where the section ran the thread variants
    assert tables.limit_metrics(None, gpu=False) == []  # a result from before the section existed


def test_shortfall_says_by_how_much():
    low = tables.metric("x", 0.81, ">=", 0.9)
    high = tables.metric("y", 1.26, "<=", 1.05)
    assert low["pass"] is False and "10.0 % short" in tables.shortfall(low)
    assert high["pass"] is False and "20.0 % over" in tables.shortfall(high)
    assert tables.metric("z", 3.0, ">=", None)["pass"] is None
