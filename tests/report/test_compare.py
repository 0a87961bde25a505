"""`customkd compare` (report/store_compare.py, report/store_page.py): which pairs are compared, the generated
advice on hand-made numbers, the refusals, and a whole compare on the tiny store through the real CLI that writes
nothing outside --out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from customkd.report import store_compare, store_page
from customkd.report.config import CompareConfig
from customkd.report.jobs import Job, Regime
from tests.conftest import TINY_STUDENT, customkd, invoke, one_error_line, store_bytes


def summary_of(accuracies: dict[str, list[float]], baseline: str | None = None) -> dict:
    """A compare summary with only what the statistics read: rows of per-seed accuracies, and their comparisons."""
    table = store_compare.method_table()
    rows = {f"compare/{m}": {"regime": "compare", "variant": m, "slug": m, "method": table[m].method,
                             "seeds": list(range(len(acc))), "accuracy": acc, "balanced_accuracy": acc}
            for m, acc in accuracies.items()}
    jobs = [Job(Regime("compare", "t", ()), table[m], 0, Path(m), ()) for m in accuracies]
    summary = {"rows": rows}
    summary["comparisons"] = store_compare.comparisons(summary, store_compare.pairs(jobs, baseline))
    return summary


def test_customkd_family_methods_are_paired_with_every_other_method_or_with_the_baseline():
    summary = summary_of({"student": [0.5] * 3, "kd": [0.5] * 3, "customkd": [0.5] * 3, "customkd+kd": [0.5] * 3})
    assert [(c["a"], c["b"]) for c in summary["comparisons"]] == [
        ("compare/customkd", "compare/student"), ("compare/customkd", "compare/kd"),
        ("compare/customkd+kd", "compare/student"), ("compare/customkd+kd", "compare/kd")]
    baseline = summary_of({"kd": [0.5] * 3, "dkd": [0.5] * 3, "customkd": [0.5] * 3}, baseline="dkd")
    assert [(c["a"], c["b"]) for c in baseline["comparisons"]] == [("compare/kd", "compare/dkd"),
                                                                   ("compare/customkd", "compare/dkd")]
    no_family = summary_of({"student": [0.5] * 3, "kd": [0.5] * 3, "dkd": [0.5] * 3})
    assert [(c["a"], c["b"]) for c in no_family["comparisons"]] == [
        ("compare/student", "compare/kd"), ("compare/student", "compare/dkd"), ("compare/kd", "compare/dkd")]


def test_holm_widens_the_intervals_when_several_comparisons_are_made():
    one = summary_of({"kd": [0.60, 0.62, 0.61], "customkd": [0.70, 0.73, 0.71]})["comparisons"][0]["accuracy"]
    two = summary_of({"student": [0.30, 0.50, 0.40], "kd": [0.60, 0.62, 0.61], "customkd": [0.70, 0.73, 0.71]})
    widened = two["comparisons"][1]["accuracy"]  # customkd − kd, the same numbers as `one`
    assert widened["mean"] == pytest.approx(one["mean"]) and "p_holm" in widened and "p_holm" not in one
    assert widened["high"] - widened["low"] > one["high"] - one["low"]


def test_the_advice_names_a_method_only_when_every_interval_excludes_zero():
    ahead = summary_of({"kd": [0.60, 0.62, 0.61], "customkd": [0.70, 0.73, 0.71]})
    assert store_page.advice(ahead).startswith("**Use `customkd`** on this data: ahead of `kd` (+10.3 points")
    behind = summary_of({"kd": [0.70, 0.73, 0.71], "customkd": [0.60, 0.62, 0.61]})
    assert store_page.advice(behind).startswith("**Use `kd`**")
    noisy = summary_of({"kd": [0.63, 0.64, 0.66], "customkd": [0.70, 0.60, 0.66]})  # mean +1.0, CI contains 0
    assert noisy["comparisons"][0]["accuracy"]["mean"] > 0
    said = store_page.advice(noisy)
    assert "No method is clearly better" in said and "inconclusive" in said and "Use" not in said
    mixed = summary_of({"student": [0.30, 0.31, 0.30], "kd": [0.70, 0.60, 0.66], "customkd": [0.63, 0.64, 0.66]})
    said = store_page.advice(mixed)  # ahead of student, inconclusive against kd: no method to use
    assert "Use" not in said and "**`customkd` is ahead of `student`**" in said and "inconclusive" in said
    one_seed = summary_of({"kd": [0.5], "customkd": [0.9]})
    assert "one seed gives no interval" in store_page.advice(one_seed)


@pytest.mark.parametrize(("args", "needle"), [
    (("--methods", "kd,nope"), "unknown method 'nope'; choose from student,"),
    (("--methods", "kd"), "--methods needs at least two different methods"),
    (("--baseline", "dkd"), "--baseline dkd is not one of --methods kd,customkd"),
    (("--seeds", "0,x"), "--seeds must be comma-separated integers"),
    (("--extra", "--lr 1e-3 --method=dkd"), "--extra cannot set --method: compare sets it for each run"),
    # distill's own ranges, checked before --out is made, not by each run in turn after compare.json is written
    (("--seeds", "0,-1"), "--seed must be >= 0"),
    (("--epochs", "0"), "--epochs must be >= 1"),
    (("--image-size", "0"), "--image-size must be >= 1"),
    (("--labels-per-class", "0"), "--labels-per-class must be >= 1"),
    (("--label-fraction", "2"), "--label-fraction must be in (0, 1]"),
    (("--min-steps", "-1"), "--min-steps must be >= 0"),
])
def test_bad_options_are_one_error_line(tiny_store, tmp_path, args, needle):
    result = invoke("compare", "--cache", tiny_store, "--out", tmp_path / "out", *args)
    one_error_line(result, needle)
    assert not (tmp_path / "out").exists()


def test_bad_places_are_one_error_line(tiny_store, tmp_path):
    one_error_line(invoke("compare", "--out", tmp_path / "o"), "--cache STORE is required")
    one_error_line(invoke("compare", "--cache", tiny_store), "--out DIR is required")
    one_error_line(invoke("compare", "--cache", tmp_path / "none.zarr", "--out", tmp_path / "o"),
                   f"no store at {tmp_path / 'none.zarr'}; make one with customkd extract")
    before = store_bytes(tiny_store, manifest=True)
    one_error_line(invoke("compare", "--cache", tiny_store, "--out", tiny_store / "cmp"), "is inside the store")
    assert store_bytes(tiny_store, manifest=True) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    one_error_line(invoke("compare", "--cache", tiny_store, "--out", mine), "is not empty and not a customkd compare")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_compare_end_to_end_writes_only_under_out_and_reuses_its_runs(tiny_folder, tiny_store, tmp_path):
    work = tmp_path / "work"  # the working directory: compare must leave it as it was, but for --out
    work.mkdir()
    (work / "README.md").write_text("# someone's project\n\n<!-- report:start -->\n<!-- report:end -->\n")
    (work / "docs").mkdir()
    store_before, work_before = store_bytes(tiny_store, manifest=True), tree(work)
    argv = ["compare", "--cache", tiny_store, "--methods", "kd,customkd", "--seeds", "0,1", "--out", "cmp",
            "--student", TINY_STUDENT, "--epochs", "1", "--min-steps", "0", "--image-size", "32",
            "--labels-per-class", "2", "--extra", "--batch-size 8"]
    done = customkd(*argv, cwd=work, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert store_bytes(tiny_store, manifest=True) == store_before
    assert {k: v for k, v in tree(work).items() if not k.startswith("cmp/")} == work_before

    out = work / "cmp"
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert set(summary["rows"]) == {"compare/kd", "compare/customkd"}
    for row in summary["rows"].values():
        assert row["seeds"] == [0, 1] and all(len(curve) == 1 for curve in row["curves"])
        for seed in (0, 1):
            config = json.loads((out / "runs" / row["slug"] / f"seed{seed}" / "config.json").read_text())
            assert (config["method"], config["seed"], config["labels_per_class"], config["batch_size"]) == (
                row["slug"], seed, 2, 8)
    [c] = summary["comparisons"]
    assert (c["a"], c["b"], c["accuracy"]["n"]) == ("compare/customkd", "compare/kd", 2)
    per_seed = [100 * (a - b) for a, b in zip(summary["rows"]["compare/customkd"]["accuracy"],
                                               summary["rows"]["compare/kd"]["accuracy"], strict=True)]
    assert c["accuracy"]["per_seed"] == pytest.approx(per_seed)
    contains_zero = c["accuracy"]["low"] <= 0 <= c["accuracy"]["high"] or np.isnan(c["accuracy"]["low"])
    assert (store_page.PAGE_MARK in (out / "results.md").read_text()) and summary["advice"] in done.stdout

    page = (out / "results.md").read_text()
    assert page.startswith(f"# Which method for `folder:{tiny_folder}`: teacher `timm:test_vit`, 3 classes\n")
    assert all(f"recall `class{k}` %" in page for k in range(3))
    assert ("inconclusive" in page) == contains_zero and ("**Use `" in page) != contains_zero
    for target in re.findall(r"\]\(([^)#]+)\)", page):  # every link of the page is a file under --out
        assert (out / target).is_file(), target
    assert (out / "results" / "learning_curves.png").stat().st_size > 10_000

    (out / "runs" / "kd" / "seed1" / "timing.json").unlink()  # a run without its finish mark runs again
    again = customkd(*argv, cwd=work, timeout=300)  # the three finished runs are reused
    assert again.returncode == 0 and re.search(r"\b3 already finished, 1 to run", again.stderr), again.stderr[-2000:]
    assert store_bytes(tiny_store, manifest=True) == store_before


def test_the_library_entry_takes_a_config_or_keywords(tiny_store, tmp_path):
    import customkd as library

    assert library.compare is store_compare.compare and library.CompareConfig is CompareConfig
    cfg = CompareConfig(cache=str(tiny_store), methods="kd,customkd", seeds="3", out=tmp_path / "o")
    assert (cfg.methods, cfg.seeds) == (("kd", "customkd"), (3,))
    with pytest.raises(library.UserError, match="not both"):
        library.compare(cfg, seeds="0")
    with pytest.raises(library.UserError, match="unknown method 'nope'"):
        library.compare(cache=str(tiny_store), methods="kd,nope", out=tmp_path / "o")
    jobs = store_compare.plan(cfg, {"data": "d", "teacher": "t", "classes": ["a", "b"]})
    assert [j.argv for j in jobs] == [
        ("distill", "--cache", str(tiny_store), "--method", m, "--seed", "3", "--workers", "1", "--out",
         str(tmp_path / "o" / "runs" / m / "seed3")) for m in ("kd", "customkd")]


def test_compare_distils_the_teacher_choice_of_a_store_with_several(tiny_store, tmp_path):
    import shutil

    from customkd.featcache.extract import ExtractConfig, extract

    store = tmp_path / "two.zarr"
    shutil.copytree(tiny_store, store)
    extract(ExtractConfig(teacher="timm:test_vit2", into=str(store), weights="random", workers=0, teacher_size=32))
    base = ["compare", "--cache", str(store), "--methods", "student,kd", "--seeds", "0", "--student", TINY_STUDENT,
            "--epochs", "1", "--min-steps", "0", "--image-size", "32", "--labels-per-class", "2"]
    unchosen = customkd(*base, "--out", str(tmp_path / "none"), timeout=300)
    one_error_line(unchosen, "holds 2 teachers")
    assert not (tmp_path / "none").exists()
    sneaked = customkd(*base, "--out", str(tmp_path / "x"), "--extra=--teacher timm:test_vit", timeout=300)
    one_error_line(sneaked, "--extra cannot set --teacher")
    done = customkd(*base, "--teacher", "timm:test_vit,timm:test_vit2", "--out", str(tmp_path / "both"), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((tmp_path / "both" / "runs" / "kd" / "seed0" / "config.json").read_text())
    assert config["teachers"] == "timm:test_vit,timm:test_vit2"
    assert "--teacher timm:test_vit,timm:test_vit2" in json.loads(
        (tmp_path / "both" / "results" / "summary.json").read_text())["command"]


def test_a_run_refused_by_distill_is_one_error_line_saying_to_fix_it(tiny_store, tmp_path):
    """``--extra`` with a value distill refuses (``--lr=-1``): the run's log is shown indented under one ``error:``
    line of compare's own, which says to fix the options (it said only to rerun, which fails the same way)."""
    result = customkd("compare", "--cache", tiny_store, "--out", tmp_path / "out", "--methods", "student,kd", "--seeds",
                      "0", "--extra=--lr=-1")
    line = one_error_line(result, "compare/student seed 0 failed (exit 2)")
    assert "fix what its last line says" in line and "  error: --lr must be > 0" in result.stderr


def test_a_page_is_never_written_into_the_dataset_of_its_store(tiny_store, tiny_folder, tmp_path):
    """``compare --out`` (``report --out``, ``report --docs``) inside the store's dataset folder: the page's PNG
    figures became samples of the dataset, so the store was stale for every later run; now one line before anything
    is written, and the dataset is left as it was."""
    before = sorted(tiny_folder.rglob("*"))
    one_error_line(invoke("compare", "--cache", tiny_store, "--out", tiny_folder / "cmp"),
                   f"dataset folder {tiny_folder} contains --out {tiny_folder / 'cmp'}; the page's figures")
    one_error_line(invoke("report", "--data", f"folder:{tiny_folder}", "--quick", "--out", tiny_folder / "rep"),
                   "the page's figures (PNG files) written there would become images of the dataset")
    one_error_line(invoke("report", "--data", f"folder:{tiny_folder}", "--out", tmp_path / "rep", "--docs",
                          tiny_folder / "class0"), f"contains --docs {tiny_folder / 'class0'}")
    assert sorted(tiny_folder.rglob("*")) == before and not (tmp_path / "rep").exists()
