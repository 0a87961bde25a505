"""`make report` (bench.compare): CKA arithmetic, and a whole report on a tiny dataset through the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from bench.figures import linear_cka
from tests.conftest import TINY_STUDENT, TINY_TEACHER


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


def test_report_end_to_end_on_a_tiny_dataset(tiny_folder, tmp_path):
    docs, readme = tmp_path / "docs", tmp_path / "README.md"
    docs.mkdir()
    readme.write_text("# x\n\n<!-- report:start -->\nSTALE-MARKER-7\n<!-- report:end -->\n\nrest\n")
    out = tmp_path / "report"
    argv = [sys.executable, "-m", "bench.compare", "--data", f"folder:{tiny_folder}", "--teacher", TINY_TEACHER,
            "--teacher-weights", "random", "--student", TINY_STUDENT, "--image-size", "32", "--epochs", "1",
            "--seeds", "0,1", "--ssl-variants", "customkd,customkd-random-head", "--supervised-variants",
            "student", "--label-fraction", "0.5", "--cache", str(tmp_path / "c.zarr"), "--out", str(out),
            "--docs", str(docs), "--readme", str(readme)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((docs / "results" / "summary.json").read_text())
    assert set(summary["rows"]) == {"ssl/customkd", "ssl/customkd-random-head", "supervised/student"}
    for key, row in summary["rows"].items():
        assert row["seeds"] == [0, 1] and len(row["curves"][0]) == 1
        for run in row["runs"]:  # every row's runs exist, with their config, in both places
            config = json.loads((tmp_path / run / "config.json").read_text())
            assert config["setting"] == key.split("/")[0] and config["epochs"] == 1
            assert (docs / "results" / "runs" / key / f"seed{config['seed']}" / "config.json").is_file()
    random_head = json.loads(open(f"{summary['rows']['ssl/customkd-random-head']['runs'][0]}/config.json").read())
    assert random_head["customize_head"] == "random"
    cka = summary["figures"]["feature_space"]
    assert set(cka) >= {"student", "random"} and 0.0 <= cka["student"]["customized_vs_student"] <= 1.0
    assert (docs / "results" / "learning_curves.png").stat().st_size > 10_000
    assert (docs / "results" / "feature_space.png").stat().st_size > 10_000
    page = (docs / "results.md").read_text()
    acc = summary["rows"]["ssl/customkd"]
    assert f"{100 * acc['accuracy_mean']:.1f} ± {100 * acc['accuracy_std']:.1f}" in page
    text = readme.read_text()
    assert "STALE-MARKER-7" not in text
    assert text.endswith("\n\nrest\n")
    assert "customkd, random head" in text and re.search(r"\| (\*\*)?customkd(\*\*)? \|", text)

    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)  # finished runs are reused
    assert again.returncode == 0 and re.search(r"\b0 to run", again.stderr), again.stderr[-2000:]

    changed = [*argv[:argv.index("--epochs") + 1], "2", *argv[argv.index("--epochs") + 2:]]
    changed[changed.index("--seeds") + 1] = "0"
    third = subprocess.run(changed, capture_output=True, text=True, timeout=600)  # another command: rerun, not reuse
    assert third.returncode == 0 and re.search(r"\b3 to run", third.stderr), third.stderr[-2000:]
    summary = json.loads((docs / "results" / "summary.json").read_text())
    assert all(len(row["curves"][0]) == 2 and row["seeds"] == [0] for row in summary["rows"].values())
