"""`make report` (`customkd report`, report/): alignment and interval arithmetic on hand-checkable arrays, the plan as
data, the ignore rule for the committed run records, and a whole report on a tiny dataset through the CLI."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from customkd.common.errors import UserError
from customkd.report import compare, results_page, runner
from customkd.report.alignment import (
    best_scale,
    centred_cosine,
    linear_cka,
    logit_r2,
    rms_ratio,
    row_space_share,
    scaled_mse,
)
from customkd.report.config import ReportConfig
from customkd.trainer.config import DistillConfig
from tests.conftest import ROOT, TINY_STUDENT, TINY_TEACHER


def test_linear_cka_is_one_for_rotated_scaled_copies_and_low_for_unrelated_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    noise = rng.normal(size=(200, 16))
    assert linear_cka(x, noise) < 0.15
    assert linear_cka(x, noise) == pytest.approx(linear_cka(noise, x))
    assert linear_cka(x, noise) < linear_cka(x, np.concatenate([x, noise], 1)) < 1.0
    assert np.isnan(linear_cka(x, np.ones((200, 3))))


def test_linear_cka_matches_the_hsic_formula():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 3))
    h = np.eye(50) - 1.0 / 50
    kx, ky = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    assert linear_cka(x, y) == pytest.approx(hsic(kx, ky) / np.sqrt(hsic(kx, kx) * hsic(ky, ky)))


def test_centred_cosine_golden_values():
    student = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert centred_cosine(student, student + 7.0) == pytest.approx(1.0)  # centring removes the offset
    assert centred_cosine(student, -3.0 * student) == pytest.approx(-1.0)
    assert centred_cosine(student, np.array([[1.0, 1.0], [-1.0, -1.0]])) == pytest.approx(1 / math.sqrt(2))
    assert centred_cosine(student, np.array([[0.0, 2.0], [0.0, -2.0]])) == pytest.approx(0.0)
    assert centred_cosine(student, np.ones((2, 2))) == 0.0  # a constant target has no direction


def test_a_rotation_changes_the_cosine_but_not_cka():
    rng = np.random.default_rng(2)
    student = rng.normal(size=(100, 6))
    quarter_turn = np.eye(6)[[1, 0, 3, 2, 5, 4]] * np.array([1, -1, 1, -1, 1, -1])  # x ⊥ x·R row by row
    rotated = student @ quarter_turn
    assert linear_cka(student, rotated) == pytest.approx(1.0)
    assert centred_cosine(student, student) == pytest.approx(1.0)
    assert abs(centred_cosine(student, rotated)) < 0.05


def test_scaled_mse_and_best_scale_golden_values():
    assert best_scale([[2.0, 4.0]], [[1.0, 2.0]]) == pytest.approx(2.0)
    assert scaled_mse([[2.0, 4.0]], [[1.0, 2.0]]) == pytest.approx(0.0)  # a pure scale error costs nothing
    assert best_scale([[3.0, 0.0], [0.0, 1.0]], np.eye(2)) == pytest.approx(2.0)  # (3 + 1) / 2
    assert scaled_mse([[3.0, 0.0], [0.0, 1.0]], np.eye(2)) == pytest.approx(0.5)  # (1² + 1²) / 4 entries
    assert best_scale([[1.0, 0.0]], [[0.0, 1.0]]) == 0.0 and scaled_mse([[1.0, 0.0]], [[0.0, 1.0]]) == 0.5
    assert best_scale([[1.0, 0.0]], [[0.0, 0.0]]) == 0.0


def test_row_space_share_golden_values():
    head = np.array([[2.0, 0.0, 0.0]])  # C = 1 row: the x axis
    along = np.array([[1.0, 5.0, 5.0], [-1.0, 5.0, 5.0], [3.0, 5.0, 5.0]])  # varies only along x
    assert row_space_share(along, head) == pytest.approx(1.0)
    assert row_space_share(along[:, [1, 0, 2]], head) == pytest.approx(0.0)
    assert row_space_share(np.array([[1.0, 1.0, 0.0], [-1.0, -1.0, 0.0]]), head) == pytest.approx(0.5)
    rank_deficient = np.array([[1.0, 0.0, 0.0], [-3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # spans x and y
    assert row_space_share(np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]]), rank_deficient) == pytest.approx(2 / 3)
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(4, 12))
    assert row_space_share(rng.normal(size=(30, 4)) @ weight, weight) == pytest.approx(1.0)
    assert np.isnan(row_space_share(np.ones((3, 3)), head))


def test_logit_r2_golden_values():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(40, 3))
    assert logit_r2(logits @ rng.normal(size=(3, 10)) + 2.0, logits) == pytest.approx(1.0)  # z = A·logits + b
    uncorrelated = logit_r2(np.array([[0.0], [0.0], [1.0], [1.0]]), np.array([[0.0], [1.0], [0.0], [1.0]]))
    assert uncorrelated == pytest.approx(0.0, abs=1e-12)
    half = logit_r2(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]), np.array([[0.0], [0.0], [1.0], [1.0]]))
    assert half == pytest.approx(1 - 0.5 / 1.75)  # dim 1 exact; dim 2 leaves 2·0.25 of 0.75 + 1.0 total
    assert rms_ratio([[2.0, -2.0]], [[1.0, 1.0]]) == pytest.approx(2.0)


def test_t_quantiles_and_paired_interval():
    assert results_page.t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert results_page.t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert results_page.t_quantile(0.975, 40) == pytest.approx(2.0211, abs=1e-4)
    stats = results_page.paired({0: 0.5, 1: 0.6, 2: 0.7, 9: 0.1}, {0: 0.4, 1: 0.4, 2: 0.4})
    assert stats["seeds"] == [0, 1, 2] and stats["per_seed"] == pytest.approx([10.0, 20.0, 30.0])
    half = 4.302653 * 10.0 / math.sqrt(3)  # s = 10 over n = 3 seeds
    assert (stats["mean"], stats["low"], stats["high"]) == pytest.approx((20.0, 20.0 - half, 20.0 + half))
    assert stats["wins"] == 3 and stats["n"] == 3
    one = results_page.paired({0: 0.5}, {0: 0.4})
    assert one["mean"] == pytest.approx(10.0) and math.isnan(one["low"]) and results_page.interval(one) == "n/a (1 seed)"


def synthetic_summary(customkd: list[float], kd: list[float]) -> dict:
    def row(slug: str, method: str, acc: list[float]) -> dict:
        return {"regime": "main", "variant": slug, "slug": slug, "method": method, "seeds": list(range(len(acc))),
                "accuracy": acc, "balanced_accuracy": acc, "accuracy_mean": float(np.mean(acc)),
                "alignment": {}, "mechanism": {}}

    summary = {"regimes": {"main": {"title": "t", "teacher": "x", "compare_to": None, "config": {"classes": [0, 1]}}},
               "rows": {"main/customkd": row("customkd", "customkd", customkd), "main/kd": row("kd", "kd", kd),
                        "main/student": row("student", "student", [0.1] * len(kd))}}
    summary["comparisons"] = results_page.comparisons(summary)
    return summary


def test_the_verdict_is_generated_from_the_paired_interval():
    behind = synthetic_summary([0.60, 0.615, 0.60], [0.63, 0.64, 0.635])
    assert {(c["a"], c["b"], c["kind"]) for c in behind["comparisons"]} == {
        ("main/customkd", "main/kd", "primary"), ("main/customkd", "main/student", "secondary")}
    assert "**`customkd` is behind `kd`**" in results_page.verdict(behind, "main")
    ahead = synthetic_summary([0.70, 0.72, 0.71], [0.63, 0.64, 0.66])
    assert "**`customkd` is ahead of `kd`**" in results_page.verdict(ahead, "main")
    unsure = synthetic_summary([0.70, 0.60, 0.66], [0.63, 0.64, 0.66])  # mean +1.0, interval contains 0
    assert "inconclusive" in results_page.verdict(unsure, "main")
    negative = synthetic_summary([0.62, 0.66, 0.62], [0.63, 0.64, 0.66])  # mean −1.0, interval contains 0
    assert "inconclusive" in results_page.verdict(negative, "main")


def test_the_strongest_customkd_row_is_read_against_the_strongest_baseline_ignoring_ablations():
    summary = synthetic_summary([0.70, 0.72, 0.71], [0.60, 0.61, 0.62])
    row = dict(summary["rows"]["main/kd"], variant="kd+fitnet", slug="kd+fitnet", method="kd+fitnet",
               accuracy=[0.71, 0.74, 0.71], accuracy_mean=0.72)
    ablation = dict(summary["rows"]["main/customkd"], variant="customkd, random head", slug="customkd-random-head",
                    accuracy=[0.99, 0.99, 0.99], accuracy_mean=0.99)
    summary["rows"].update({"main/kd+fitnet": row, "main/customkd-random-head": ablation})
    found = results_page.strongest(summary, "main")
    assert (found["ours"]["slug"], found["baseline"]["slug"]) == ("customkd", "kd+fitnet")
    assert found["accuracy"]["per_seed"] == pytest.approx([-1.0, -2.0, 0.0])
    said = results_page.strongest_sentence(summary, "main")
    assert "`customkd` 71.0 − `kd+fitnet` 72.0 = -1.0 points" in said
    assert "**not distinguishable from the strongest baseline**" in said
    summary["rows"]["main/kd+fitnet"] = dict(row, accuracy=[0.60, 0.62, 0.61], accuracy_mean=0.61)
    summary["rows"]["main/kd"]["accuracy_mean"] = 0.61
    assert "**ahead of the strongest baseline**" in results_page.strongest_sentence(summary, "main")
    del summary["rows"]["main/customkd"], summary["rows"]["main/customkd-random-head"]
    assert results_page.strongest_sentence(summary, "main") == ""


def test_holm_widens_secondary_intervals_by_step_and_adjusts_p_values():
    found = [{"accuracy": results_page.paired({0: a, 1: a + 0.02, 2: a + 0.01, 3: a, 4: a + 0.03},
                                               {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5})} for a in (0.6, 0.52, 0.49)]
    for c in found:
        c["accuracy"]["p"] = results_page.p_value(c["accuracy"])
    raw = [c["accuracy"]["p"] for c in found]
    plain_half = [c["accuracy"]["high"] - c["accuracy"]["mean"] for c in found]
    results_page.holm(found)
    order = sorted(range(3), key=lambda i: raw[i])
    adjusted = [min(1.0, (3 - k) * raw[i]) for k, i in enumerate(order)]
    adjusted = [max(adjusted[: k + 1]) for k in range(3)]  # step-down: monotone
    assert [found[i]["accuracy"]["p_holm"] for i in order] == pytest.approx(adjusted)
    assert [found[i]["accuracy"]["level"] for i in order] == pytest.approx([0.05 / 3, 0.05 / 2, 0.05])
    smallest = order[0]  # the first step uses t_{1 − 0.05/6, 4} = 3.9608 instead of t_{0.975, 4} = 2.7764
    widened = found[smallest]["accuracy"]["high"] - found[smallest]["accuracy"]["mean"]
    assert widened / plain_half[smallest] == pytest.approx(3.9608 / 2.7764, rel=1e-3)


def test_the_default_plan_covers_every_regime_with_five_seeds(tmp_path):
    jobs = compare.plan(ReportConfig(out=tmp_path).resolved())
    assert {job.seed for job in jobs} == {0, 1, 2, 3, 4}
    keys = {job.key for job in jobs}
    every = ("student", "fitnet", "kd", "kd+fitnet", "dkd", "customkd", "customkd+kd", "customkd+dkd",
             "customkd-random-head", "customkd-random-trained", "customkd-no-specific")
    assert {f"{regime}/{v}" for regime in ("headroom", "pretrained") for v in every} <= keys
    assert {"main/student", "main/kd", "main/customkd", "main/customkd+kd"} <= keys
    assert {f"teachers-{t}/{v}" for t in ("lite0", "lite2", "ensemble") for v in ("kd", "customkd")} <= keys
    assert len(jobs) == 5 * (11 + 11 + 4 + 3 * 2)
    by_key = {(job.key, job.seed): job.argv for job in jobs}
    pretrained = " ".join(by_key["pretrained/customkd", 0])
    assert "--student efficientnet_lite0 --student-pretrained" in pretrained
    assert "caches/digits-efficientnet_lite2-128px.zarr" in pretrained and "--labels-per-class 10" in pretrained
    assert "--label-fraction" not in pretrained and "--eval-split" not in pretrained
    assert "caches/elpv-efficientnet_lite0.zarr" in by_key["main/kd", 3]
    joint = by_key["headroom/customkd-random-trained", 1]
    assert joint[joint.index("--customize-head") + 1] == "random-trained"
    assert joint[joint.index("--student") + 1] == "mobilenetv3_small_050"
    dev = compare.plan(ReportConfig(out=tmp_path, regimes="headroom", eval_split="dev", epochs=3).resolved())
    assert all(j.argv[j.argv.index("--eval-split") + 1] == "dev" for j in dev)
    assert all(j.argv[len(j.argv) - 1 - j.argv[::-1].index("--epochs") + 1] == "3" for j in dev)  # the last one wins


def test_a_reduced_plan_adds_the_runs_a_regime_is_compared_to(tmp_path):
    cfg = ReportConfig(out=tmp_path, regimes="large-teacher", variants="customkd", seeds="0,1", epochs=2)
    jobs = compare.plan(cfg.resolved())
    assert sorted((job.key, job.seed) for job in jobs) == [("large-teacher/customkd", 0), ("large-teacher/customkd", 1),
                                                          ("main/customkd", 0), ("main/customkd", 1)]
    assert all(job.argv[job.argv.index("--epochs") + 1] == "2" and "--min-steps" not in job.argv for job in jobs)
    with pytest.raises(UserError, match="unknown variant 'nope'"):
        compare.plan(ReportConfig(variants="customkd,nope").resolved())
    with pytest.raises(UserError, match="no runs planned"):
        compare.plan(ReportConfig(regimes="large-teacher", variants="dkd").resolved())


def test_the_committed_run_records_are_not_ignored():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    record = subprocess.run(["git", "check-ignore", "-q", "docs/results/runs/main/customkd/seed0/config.json"], cwd=ROOT)
    assert record.returncode == 1, "docs/results/runs/ must be committed; anchor the runs/ rule in .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", "runs/report/main/x"], cwd=ROOT).returncode == 0


def test_report_end_to_end_on_a_tiny_dataset(tiny_folder, tmp_path):
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    docs.mkdir()
    readme.write_text("# x\n\n<!-- report:start -->\nSTALE-MARKER-7\n<!-- report:end -->\n\nrest\n")
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "customkd.cli", "report", "--data", f"folder:{tiny_folder}", "--teacher", TINY_TEACHER,
            "--large-teacher", "timm:test_vit2", "--teacher-weights", "random", "--student", TINY_STUDENT,
            "--image-size", "32", "--epochs", "1", "--seeds", "0,1", "--regimes", "main,large-teacher",
            "--variants", "student,kd,customkd", "--label-fraction", "0.5",
            "--cache", str(tmp_path / "c.zarr"), "--large-cache", str(tmp_path / "c2.zarr"), "--out", str(out),
            "--docs", str(docs), "--readme", str(readme)]
    if "min_steps" in DistillConfig.__dataclass_fields__:  # 1 epoch means 1 epoch on 30 images
        argv += ["--min-steps", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((docs / "results" / "summary.json").read_text())
    assert set(summary["rows"]) == {"main/student", "main/kd", "main/customkd", "large-teacher/kd",
                                    "large-teacher/customkd"}
    assert len(summary["extractions"]) == 2
    for key, row in summary["rows"].items():
        assert row["seeds"] == [0, 1] and len(row["curves"][0]) == 1
        for run in row["runs"]:  # every row's runs exist, with their config, in both places
            config = json.loads((Path(run) / "config.json").read_text())
            assert config["setting"] == "ssl" and config["epochs"] == 1
            assert (docs / "results" / "runs" / key / f"seed{config['seed']}" / "config.json").is_file()
            assert (docs / "results" / "runs" / key / f"seed{config['seed']}" / "metrics.json").is_file()
    assert json.loads((Path(summary["rows"]["main/kd"]["runs"][0]) / "config.json").read_text())["method"] == "kd"
    for key in ("main/customkd", "large-teacher/customkd"):
        alignment = summary["rows"][key]["alignment"]
        assert len(alignment["cosine"]) == 2 and all(-1 <= c <= 1 for c in alignment["cosine"])
        assert all(0 <= s <= 1 + 1e-9 for s in alignment["head_row_space_share"])
        assert all(0 <= c <= 1 + 1e-9 for c in alignment["cka_customized_vs_student"])
        assert (docs / "results" / "runs" / key / "seed1" / "alignment.json").is_file()
    assert summary["rows"]["main/student"]["alignment"] == {}
    pairs = {(c["a"], c["b"], c["kind"]) for c in summary["comparisons"]}
    assert pairs == {("main/customkd", "main/kd", "primary"), ("main/customkd", "main/student", "secondary"),
                     ("large-teacher/customkd", "large-teacher/kd", "primary"),
                     ("large-teacher/kd", "main/kd", "secondary"), ("large-teacher/customkd", "main/customkd", "secondary")}
    for c in summary["comparisons"]:
        assert c["accuracy"]["n"] == 2 and c["accuracy"]["low"] <= c["accuracy"]["mean"] <= c["accuracy"]["high"]
    assert summary["budget"]["runs"] == 10 and summary["budget"]["runs_run_here"] == 10
    assert (docs / "results" / "learning_curves.png").stat().st_size > 10_000
    assert (docs / "results" / "feature_space.png").stat().st_size > 10_000

    page = (docs / "results.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", page):  # every relative link of the page is a file
        assert (docs / target).is_file(), target
    index = (docs / "results" / "runs" / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", index):
        assert (docs / "results" / "runs" / target).is_file(), target
    acc = summary["rows"]["main/customkd"]
    assert f"{100 * acc['accuracy_mean']:.1f} ± {100 * acc['accuracy_std']:.1f}" in page
    assert "## Budget (measured)" in page and "## Comparisons, fixed before the numbers" in page
    assert re.search(r"\*\*`customkd` (is ahead of|is behind|vs) `kd`", page) and "secondary (Holm)" in page
    assert "share in head row space" in page and "customkd (teacher `timm:test_vit2`)" in page
    assert "Per-class recall" in page
    text = readme.read_text()
    assert "STALE-MARKER-7" not in text and text.endswith("\n\nrest\n")
    assert "Main regime" in text and re.search(r"\| (\*\*)?customkd(\*\*)? \|", text)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # finished runs are reused
    assert again.returncode == 0 and re.search(r"\b0 to run", again.stderr), again.stderr[-2000:]

    changed = [*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:]]
    changed[changed.index("--seeds") + 1] = "0"
    changed[changed.index("--regimes") + 1] = "main"
    changed[changed.index("--variants") + 1] = "customkd"
    third = subprocess.run(changed, capture_output=True, text=True, timeout=600)  # another command: rerun, not reuse
    assert third.returncode == 0 and re.search(r"\b1 to run", third.stderr), third.stderr[-2000:]
    summary = json.loads((docs / "results" / "summary.json").read_text())
    assert set(summary["rows"]) == {"main/customkd"} and summary["rows"]["main/customkd"]["seeds"] == [0]
    assert len(summary["rows"]["main/customkd"]["curves"][0]) == 2
    assert "With one seed there is no interval" not in (docs / "results.md").read_text()  # no baseline: no verdict


def test_outside_the_repository_the_report_writes_only_into_its_own_folders(tmp_path, monkeypatch):
    project = tmp_path / "someone"
    (project / "docs" / "results" / "runs").mkdir(parents=True)
    (project / "docs" / "results" / "runs" / "mine.txt").write_text("keep")
    (project / "docs" / "results.md").write_text("my page")
    (project / "README.md").write_text("# mine\n")
    monkeypatch.chdir(project)
    cfg = ReportConfig().resolved()
    assert cfg.docs == cfg.out and cfg.readme is None  # not this repository: nothing in ./docs or ./README.md
    mine = ReportConfig(docs=project / "docs").resolved()
    with pytest.raises(UserError, match="was not generated by customkd report"):
        results_page.check_writable(mine)
    (project / "docs" / "results.md").unlink()  # their own results/ folder alone: figures would overwrite theirs
    with pytest.raises(UserError, match="results exists and was not generated by customkd report"):
        results_page.check_writable(mine)
    (project / "docs" / "results.md").write_text("my page")
    with pytest.raises(UserError, match="has no <!-- report:start -->"):
        results_page.check_writable(ReportConfig(docs=tmp_path / "new", readme=project / "README.md").resolved())
    with pytest.raises(UserError, match="not the report's run-record folder"):
        compare.copy_run_records([], tmp_path / "out", project / "docs" / "results")
    assert (project / "docs" / "results" / "runs" / "mine.txt").read_text() == "keep"
    monkeypatch.chdir(ROOT)
    here = ReportConfig().resolved()
    assert here.docs == Path("docs") and here.readme == Path("README.md")


def test_a_regime_can_run_its_own_seeds(tmp_path):
    cfg = ReportConfig(out=tmp_path, regimes="headroom,pretrained", variants="kd", regime_seeds="pretrained=0,2")
    jobs = compare.plan(cfg.resolved())
    assert sorted((j.key, j.seed) for j in jobs) == [("headroom/kd", s) for s in range(5)] + [
        ("pretrained/kd", 0), ("pretrained/kd", 2)]
    with pytest.raises(UserError, match="--regime-seeds"):
        ReportConfig(regime_seeds="pretrained=a")


def test_the_default_plan_repeats_the_committed_runs_command_lines(tmp_path, monkeypatch):
    """Finished runs are reused by argv equality: the default plan must name each committed run's command exactly,
    or the next `make report` reruns hours of finished work."""
    records = sorted((ROOT / "docs" / "results" / "runs").glob("*/*/seed*/timing.json"))
    if not records:
        pytest.skip("no committed run records")
    monkeypatch.chdir(ROOT)
    planned = {str(job.run_dir): list(job.argv) for job in compare.plan(ReportConfig().resolved())}
    for record in records:
        argv = json.loads(record.read_text())["argv"]
        assert planned[argv[argv.index("--out") + 1]] == argv, record


def test_the_committed_page_renders_again_from_its_summary(monkeypatch):
    """docs/results.md is a function of docs/results/summary.json alone (nothing hand-edited, nothing lost)."""
    page, summary = ROOT / "docs" / "results.md", ROOT / "docs" / "results" / "summary.json"
    if not summary.is_file():
        pytest.skip("no committed summary")
    monkeypatch.chdir(ROOT)
    assert results_page.render(json.loads(summary.read_text()), ReportConfig().resolved()) == page.read_text()


def test_a_report_never_deletes_a_folder_in_its_way_that_distill_did_not_make(tmp_path):
    """``--out`` holding the user's own folder where a run goes, or a link there: refused before the run starts,
    nothing deleted; a folder distill marked is started over."""
    from customkd.trainer import run_folder

    job = compare.plan(ReportConfig(out=tmp_path / "out", regimes="main", variants="student", seeds="0").resolved())[0]
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="nothing was deleted"):
        runner.start(job, 1, tmp_path / "logs")
    assert (job.run_dir / "mine.txt").read_text() == "keep"
    elsewhere = job.run_dir.rename(tmp_path / "elsewhere")
    job.run_dir.symlink_to(elsewhere)
    with pytest.raises(UserError, match="nothing was deleted"):
        runner.start(job, 1, tmp_path / "logs")
    assert (elsewhere / "mine.txt").read_text() == "keep" and job.run_dir.is_symlink()
    job.run_dir.unlink()
    job.run_dir.mkdir()
    (job.run_dir / run_folder.MARKER).write_text("{}")
    (job.run_dir / run_folder.CHECKPOINT).write_text("a run of another command")
    run_folder.remove_run(job.run_dir)
    assert not job.run_dir.exists()


def test_the_teacher_regimes_distil_each_choice_of_one_store(tmp_path):
    jobs = compare.plan(ReportConfig(out=tmp_path, regimes="teachers-lite0,teachers-lite2,teachers-ensemble").resolved())
    assert len(jobs) == 3 * 2 * 5
    store = "caches/digits-efficientnet_lite0+efficientnet_lite1+efficientnet_lite2-128px.zarr"
    picks = {}
    for job in jobs:
        assert job.argv[job.argv.index("--cache") + 1] == store
        assert job.argv[job.argv.index("--student") + 1] == "mobilenetv3_small_050"
        picks.setdefault(job.regime.slug, set()).add(job.argv[job.argv.index("--teacher") + 1])
        assert job.source == f"{store}#{job.argv[job.argv.index('--teacher') + 1]}"
    assert picks == {"teachers-lite0": {"efficientnet_lite0"}, "teachers-lite2": {"efficientnet_lite2"},
                     "teachers-ensemble": {"efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"}}
    assert compare.REGIMES["teachers-ensemble"].compare_to == "teachers-lite2"
    assert compare.REGIMES["teachers-lite2"].compare_to == "teachers-lite0"
    assert compare.store_of(compare.REGIMES["teachers-lite0"], ReportConfig()).teachers == (
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def test_a_store_of_two_teachers_is_extracted_once_and_read_per_choice(tiny_folder, tmp_path):
    """The first teacher with --out, the second with --into; a record per teacher choice, each with its own store
    fingerprint; the store's time counted once; a rerun remembers the times it measured."""
    store = compare.Store(f"folder:{tiny_folder}", TINY_TEACHER, ("--views", "2"), added=("timm:test_vit2",))
    cache = str(tmp_path / "two.zarr")
    cfg = ReportConfig(out=tmp_path / "report", teacher_weights="random")
    both = f"{TINY_TEACHER},timm:test_vit2"
    records = compare.extract(store, cache, cfg, {TINY_TEACHER, "timm:test_vit2", both})
    assert set(records) == {f"{cache}#{TINY_TEACHER}", f"{cache}#timm:test_vit2", f"{cache}#{both}"}
    one, two, ensemble = (records[f"{cache}#{p}"] for p in (TINY_TEACHER, "timm:test_vit2", both))
    assert len({json.dumps(r["store_fingerprint"], sort_keys=True) for r in (one, two, ensemble)}) == 3
    assert ensemble["shape"][2] == one["shape"][2] + two["shape"][2]
    assert "--into" in two["command"] and "--out" in one["command"] and ensemble["command"].count("customkd extract") == 2
    assert ensemble["seconds"] == pytest.approx(one["seconds"] + two["seconds"], abs=0.11)
    assert one["store_seconds"] == two["store_seconds"] == ensemble["seconds"]
    assert "timed by this report" in two["measured"]
    again = compare.extract(store, cache, cfg, {"timm:test_vit2"})[f"{cache}#timm:test_vit2"]
    assert (again["seconds"], again["measured"]) == (two["seconds"], two["measured"])


def test_the_teachers_table_reads_each_choice_and_each_teacher_against_the_last():
    def row(regime: str, slug: str, acc: list[float]) -> dict:
        return {"regime": regime, "variant": slug, "slug": slug, "method": slug, "seeds": [0, 1, 2], "accuracy": acc,
                "balanced_accuracy": acc, "accuracy_mean": float(np.mean(acc)),
                "accuracy_std": float(np.std(acc, ddof=1)), "probe_accuracy": [0.5, 0.5, 0.5]}

    regimes = {"a": ("t0", None), "b": ("t2", "a")}
    summary = {"regimes": {s: {"teacher": t, "pick": t, "compare_to": c, "data": "digits"}
                           for s, (t, c) in regimes.items()},
               "rows": {"a/kd": row("a", "kd", [0.50, 0.52, 0.54]), "a/customkd": row("a", "customkd", [0.51, 0.53, 0.55]),
                        "b/kd": row("b", "kd", [0.60, 0.62, 0.64]), "b/customkd": row("b", "customkd", [0.60, 0.62, 0.64])}}
    summary["comparisons"] = results_page.comparisons(summary)
    lines = results_page.teachers_table(summary)
    assert lines[0] == "| accuracy % | `t0` | `t2` |"
    assert lines[2] == "| kd | 52.0 ± 2.0 | 62.0 ± 2.0 |"
    assert lines[4] == "| teacher probe | 50.0 ± 0.0 | 50.0 ± 0.0 |"
    assert lines[5] == "| customkd − kd (points, 95 % CI) | +1.0 [+1.0, +1.0] | +0.0 [+0.0, +0.0] |"
    assert "`t2` − `t0` with kd: +10.0 points" in lines[7] and "`t2` − `t0` with customkd: +9.0 points" in lines[7]
    assert results_page.teachers_table({**summary, "regimes": {s: {**r, "pick": None} for s, r in
                                                                summary["regimes"].items()}}) == []


def test_report_refuses_an_out_folder_that_is_not_its_own_before_writing_anything(tmp_path):
    """``--out`` holding a user's file, or being a file: one line naming it and the fix, exit 2, before the
    extraction (no store made) and before any log, request or mark file is written; ``--no-docs`` with ``--docs``
    is refused likewise. An empty folder, a marked one and an older report's unmarked one are the report's."""
    from tests.conftest import customkd, one_error_line

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    (mine / "main").mkdir()
    args = ("report", "--data", "folder:/nonexistent", "--teacher-weights", "random", "--regimes", "main",
            "--variants", "student", "--seeds", "0", "--cache", tmp_path / "c.zarr", "--no-docs")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    line = one_error_line(customkd(*args, "--out", mine, cwd=tmp_path), f"--out {mine} is not empty and not a "
                          "customkd report folder")
    assert "notes.txt" in line and "pass a new or empty folder" in line
    (tmp_path / "file").write_text("keep")
    one_error_line(customkd(*args, "--out", tmp_path / "file", cwd=tmp_path), "is a file")
    one_error_line(customkd(*args, "--out", tmp_path / "r", "--docs", tmp_path / "d", cwd=tmp_path),
                   "leave out --docs and --readme")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*before, Path("file")])
    assert (mine / "notes.txt").read_text() == "keep"
    older = tmp_path / "older"  # what a report wrote before it marked its folders
    for folder in ("logs", "main/kd/seed0", "figures"):
        (older / folder).mkdir(parents=True)
    (older / "summary.json").write_text("{}")
    for place in (tmp_path / "new", older):
        compare.claim_out(ReportConfig(out=place))
    (mine / compare.MARK).write_text("{}")
    compare.claim_out(ReportConfig(out=mine))
    (older / "logs").rename(tmp_path / "elsewhere")
    (older / "logs").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="holds logs"):
        compare.claim_out(ReportConfig(out=older))


def test_report_no_docs_writes_the_page_under_out_only(tiny_folder, tmp_path):
    """Run from the customkd repository (where the page would go to docs/ and the README's block), ``--no-docs``
    writes the same page, figures and run records under ``--out`` and nothing else: no docs/, README untouched."""
    from tests.conftest import customkd

    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "customkd"\n')
    readme = "# x\n\n<!-- report:start -->\nOLD\n<!-- report:end -->\n"
    (project / "README.md").write_text(readme)
    out = tmp_path / "out"
    done = customkd("report", "--data", f"folder:{tiny_folder}", "--teacher", TINY_TEACHER, "--teacher-weights",
                    "random", "--student", TINY_STUDENT, "--image-size", "32", "--epochs", "1", "--min-steps", "0",
                    "--seeds", "0", "--regimes", "main", "--variants", "student,kd", "--label-fraction", "0.5",
                    "--cache", tmp_path / "c.zarr", "--out", out, "--no-docs", "--parallel", "1", cwd=project,
                    timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "pyproject.toml"]
    assert (project / "README.md").read_text() == readme
    page = (out / "results.md").read_text()
    assert results_page.PAGE_MARK in page and "## Learning curves" in page
    for target in re.findall(r"\]\(([^)#]+)\)", page):  # every relative link of the page is a file under --out
        assert (out / target).is_file(), target
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert set(summary["rows"]) == {"main/student", "main/kd"}
    assert (out / "results" / "runs" / "main" / "kd" / "seed0" / "metrics.json").is_file()
    assert (out / compare.MARK).is_file()


def test_the_readme_block_is_replaced_and_every_other_byte_kept(tmp_path):
    """``--readme``: a README with CRLF line endings, with bytes that are not UTF-8, reached through a link, with
    its own permissions: the block is replaced, every other byte, the line endings, the link (written through into
    its target) and the file's mode are kept."""
    import os

    from customkd.report.config import README_END, README_START

    summary = json.loads((ROOT / "docs" / "results" / "summary.json").read_text())
    head, tail = "# caf\xe9\r\nintro\r\n".encode("latin-1"), b"\r\nend \xff\r\n"
    readme = tmp_path / "README.md"
    readme.write_bytes(head + f"{README_START}\r\nold\r\n{README_END}".encode() + tail)
    readme.chmod(0o600)
    (tmp_path / "link.md").symlink_to(readme)
    results_page.check_writable(ReportConfig(docs=tmp_path / "docs", readme=tmp_path / "link.md"))
    results_page.update_readme(tmp_path / "link.md", summary)
    written = readme.read_bytes()
    block = f"{README_START}\n{results_page.headline(summary)}\n{README_END}".replace("\n", "\r\n").encode()
    assert written == head + block + tail
    assert (tmp_path / "link.md").is_symlink() and os.stat(readme).st_mode & 0o777 == 0o600
