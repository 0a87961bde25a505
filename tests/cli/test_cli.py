"""The CLI as a user runs it: real subprocesses, tiny generated data, a tiny random-weight teacher."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from customkd.trainer.evaluate import evaluate_run
from tests.conftest import (
    TINY_RUN,
    TINY_STUDENT,
    TINY_TEACHER,
    cli_env,
    customkd,
    invoke,
    make_tiny_hue_folder,
    one_error_line,
)


def test_extract_then_distill_end_to_end(tiny_folder, tmp_path):
    store = tmp_path / "c.zarr"
    done = customkd("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
                    "--out", str(store), "--views", "3", "--workers", "1", "--shard-size", "8")
    assert done.returncode == 0, done.stderr
    assert "N=30 V=3 D=64" in done.stdout
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["customkd"]["status"] == "complete"
    assert not np.isnan(group["features_t0"][:]).any()

    again = customkd("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
                     "--out", str(store), "--views", "3", "--workers", "1", "--shard-size", "8")
    assert again.returncode == 0 and "nothing to do" in again.stdout

    for method in ("customkd", "student"):
        run = tmp_path / f"run-{method}"
        trained = customkd("distill", "--min-steps", "0", "--cache", str(store), "--student", TINY_STUDENT, "--method", method,
                           "--setting", "ssl", "--labels-per-class", "2", "--epochs", "2", "--image-size", "32",
                           "--batch-size", "8", "--workers", "1", "--out", str(run))
        assert trained.returncode == 0, trained.stderr
        metrics = json.loads((run / "metrics.json").read_text())
        final = metrics["final"]
        assert f"student accuracy {final['accuracy']:.4f}  balanced accuracy {final['balanced_accuracy']:.4f}" in \
            trained.stdout.splitlines()[-2]
        assert len(metrics["epochs"]) == 2 and {k: metrics["epochs"][-1]["eval"][k] for k in final} == final
        evaluated = evaluate_run(str(run), workers=0)  # the saved student is the one that was reported
        assert {k: evaluated[k] for k in final} == final
        probe = metrics["teacher_probe"]
        assert probe["n_labeled"] == 6 and f"teacher probe accuracy {probe['accuracy']:.4f} (6 labeled" in trained.stdout
        assert probe["accuracy"] == _refit_teacher_probe(run)["accuracy"]  # θ^c_t on the run's own split and features
        config = json.loads((run / "config.json").read_text())
        assert config["method"] == method and config["n_labeled"] == 6 and config["lambda_general"] is None
        assert config["effective_lambda_general"] == {"customkd": 0.1, "student": 1.0}[method]
        assert (run / "student.safetensors").stat().st_size > 0
        if method == "customkd":
            assert "customize" not in metrics["epochs"][0]  # warm-up: one KD epoch before the first customization
            assert "customize" in metrics["epochs"][1] and "specific" in metrics["epochs"][1]["train"]
            assert metrics["epochs"][1]["train"]["specific_unreachable"] == 0.0  # the target is reachable
            assert metrics["epochs"][1]["train"]["rms_ratio"] > 0
        else:
            assert "customize" not in metrics["epochs"][0]


def test_a_fully_labelled_store_trains_on_every_label_by_default_and_says_so(tiny_store, tmp_path):
    run = tmp_path / "all-labels"
    done = customkd("distill", "--cache", str(tiny_store), "--student", TINY_STUDENT, "--method", "kd", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "8", "--workers", "0", "--out", str(run))
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["setting"] == "ssl" and config["label_fraction"] is None and config["labels_per_class"] is None
    assert config["n_labeled"] == config["n_train"] == 24 and config["effective_epochs"] == 1
    assert "effective_label_fraction" not in config
    said = [line for line in done.stderr.splitlines() if "training rows" in line]
    assert len(said) == 1 and "24 training rows, 24 labeled (every stored label;" in said[0], done.stderr
    assert "1 KD epochs (--epochs)" in said[0] and "batch 8, 0 workers, 32 px, cpu, fp32" in said[0]

    budget = tmp_path / "budget"
    done = customkd("distill", "--cache", str(tiny_store), "--student", TINY_STUDENT, "--method", "kd", "--epochs", "1",
                    "--image-size", "32", "--batch-size", "8", "--workers", "0", "--label-fraction", "0.25",
                    "--out", str(budget))
    assert done.returncode == 0, done.stderr
    config = json.loads((budget / "config.json").read_text())
    assert (config["n_train"], config["n_labeled"], config["label_fraction"]) == (24, 6, 0.25)  # 2 of 8 per class
    assert "24 training rows, 6 labeled (--label-fraction 0.25), 18 unlabeled" in done.stderr


def _refit_teacher_probe(run: Path) -> dict:
    """The teacher probe's metrics refitted in this process from the finished run (its store, split and seed)."""
    from customkd.trainer.assemble import load_trained

    return load_trained(run).inputs.probe_metrics


def test_dinov2_extracts_at_224_with_its_tap_in_the_fingerprint(tmp_path):
    """`extract --teacher dinov2_vits --weights random` runs at 224 px, not 518, and the store says so."""
    folder = make_tiny_hue_folder(tmp_path / "images", classes=2, per_class=2)
    for tap, dim in (("cls", 384), ("cls+mean", 768)):
        out = tmp_path / f"{tap}.zarr"
        result = customkd("extract", "--teacher", "dinov2_vits", "--weights", "random", "--data", f"folder:{folder}",
                          "--out", str(out), "--views", "1", "--tap", tap, "--workers", "0")
        assert result.returncode == 0, result.stderr
        assert f"N=4 V=1 D={dim}" in result.stdout
        teacher = json.loads((out / "zarr.json").read_text())["attributes"]["customkd"]["teachers"][0]["fingerprint"]
        assert (teacher["size"], teacher["native_size"], teacher["tap"], teacher["precision"]) == (224, 518, tap, "fp32")
        assert teacher["preprocess"]["size"] == 224


@pytest.mark.parametrize("args, needle", [
    (["extract", "--teacher", "nope", "--data", "elpv", "--out", "{tmp}/x.zarr"], "unknown teacher 'nope'; known:"),
    (["extract", "--teacher", TINY_TEACHER, "--data", "folder:{tmp}/missing", "--out", "{tmp}/x.zarr"], "does not exist"),
    (["extract", "--teacher", TINY_TEACHER, "--data", "imagenet", "--out", "{tmp}/x.zarr"], "unknown dataset"),
    (["extract", "--teacher", TINY_TEACHER, "--data", "{tmp}", "--out", "{tmp}/x.zarr"], "contains --out"),
    (["extract", "--teacher", TINY_TEACHER, "--data", "elpv", "--views", "0", "--out", "{tmp}/x.zarr"], "--views must be between 1 and 1024"),
    (["distill", "--min-steps", "0", "--cache", "{tmp}/absent.zarr"], "does not exist; run `make extract`"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--method", "magic"], "unknown method 'magic'; known:"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--student", "no_such_net"], "unknown student"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--setting", "semi"], "unknown --setting"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--label-fraction", "0"], "label-fraction must be in (0, 1]"),
    (["distill", "--cache", "{store}", "--setting", "supervised", "--label-fraction", "0.5"],
     "simulate a label budget in --setting ssl; --setting supervised uses every stored label"),
    (["distill", "--cache", "{store}", "--setting", "uda", "--source", "a", "--target", "b", "--labels-per-class", "2"],
     "--setting uda uses every stored label"),
    (["distill", "--min-steps", "0", "--cache", "{file}"], "regular file"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--epochs", "0"], "--epochs must be >= 1"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--setting", "uda", "--source", "a"], "needs --source"),
    (["distill", "--min-steps", "0", "--cache", "{store}", "--setting", "uda", "--source", "a", "--target", "b"], "unknown domain 'a'"),
    (["extract", "--teacher", TINY_TEACHER, "--weights", "{tmp}/nope.pth", "--data", "elpv", "--out", "{tmp}/x.zarr"],
     "weights file"),
    (["extract", "--teacher", TINY_TEACHER, "--data", "elpv", "--out", "{file}"], "not a customkd store"),
    (["cache", "info", "{tmp}/absent.zarr"], "does not exist"),
    (["extract", "--teacher", "dinov2_vits", "--weights", "random", "--teacher-size", "230", "--data", "elpv", "--out",
      "{tmp}/x.zarr"], "not a multiple of the patch size 14 of teacher 'dinov2_vits'; use 224 or 238"),
    (["extract", "--teacher", TINY_TEACHER, "--weights", "random", "--teacher-size", "0", "--data", "elpv", "--out",
      "{tmp}/x.zarr"], "--teacher-size must be between 16 and 2048 px"),  # 0 is no size, not "the teacher's own"
    (["extract", "--teacher", TINY_TEACHER, "--weights", "random", "--tap", "embed", "--data", "elpv", "--out",
      "{tmp}/x.zarr"], "--tap embed does not apply to teacher 'timm:test_vit'; it offers: pooled, cls, mean"),
    (["extract", "--teacher", TINY_TEACHER, "--precision", "fp8", "--data", "elpv", "--out", "{tmp}/x.zarr"],
     "unknown --precision 'fp8'; known: auto"),
    (["distill", "--cache", "{store}", "--lr", "nan"], "--lr must be a finite number"),
    (["distill", "--cache", "{store}", "--lambda-specific", "inf"], "--lambda-specific must be a finite number"),
    (["distill", "--cache", "{store}", "--kd-temperature", "nan"], "--kd-temperature must be a finite number"),
    (["distill", "--cache", "{store}", "--lr", "-1"], "--lr must be > 0"),
    (["distill", "--cache", "{store}", "--weight-decay", "-1"], "--weight-decay must be"),
    (["distill", "--cache", "{store}", "--optimizer", "sgd", "--weight-decay", "-0.1"], "--weight-decay must be >= 0"),
    (["distill", "--cache", "{store}", "--warmup-epochs", "-1"], "--warmup-epochs must be >= 0"),
    (["distill", "--cache", "{store}", "--warmup-lr", "-1e-5"], "--warmup-lr must be >= 0"),
    (["distill", "--cache", "{store}", "--epochs", "2", "--warmup-epochs", "2"],
     "--warmup-epochs 2 must be shorter than the run (--epochs 2)"),
    (["distill", "--cache", "{store}", "--min-steps", "0", "--warmup-epochs", "8", "--out", "{tmp}/run"],
     "--warmup-epochs 8 is"),  # the run's 8 epochs, known once the store is read
    (["distill", "--cache", "{store}", "--seed", "-1"], "--seed must be >= 0"),
    (["distill", "--cache", "{store}", "--seed", "4294967296"], "--seed must be >= 0 and < 2**32"),
    (["extract", "--teacher", TINY_TEACHER, "--seed", "4294967296", "--data", "elpv", "--out", "{tmp}/x.zarr"],
     "--seed must be >= 0 and < 2**32"),
    (["distill", "--cache", "{store}", "--fixmatch-weight", "-1"], "--fixmatch-weight must be >= 0"),
    (["distill", "--cache", "{store}", "--fixmatch-threshold", "1.5"], "--fixmatch-threshold must be in [0, 1]"),
    (["distill", "--cache", "{store}", "--dkd-alpha", "-1"], "--dkd-alpha must be >= 0"),
    (["distill", "--cache", "{store}", "--dkd-beta", "-0.5"], "--dkd-beta must be >= 0"),
    (["distill", "--cache", "{store}", "--device", "foo"], "unknown --device 'foo'"),
    (["distill", "--cache", "{store}", "--batch-size", "1"], "--batch-size must be >= 2 (BatchNorm"),
    (["predict", "{tmp}/run", "--images", "{tmp}", "--out", "{tmp}/p.csv", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["predict", "{tmp}/run", "--images", "{tmp}", "--out", "{tmp}/p.csv", "--workers", "-1"], "--workers must be >= 0"),
    (["evaluate", "{tmp}/run", "--workers", "-1"], "--workers must be >= 0"),
    # a loader process each, a few hundred MB apiece: 100000 of them would exhaust the machine
    (["extract", "--teacher", TINY_TEACHER, "--workers", "100000", "--data", "elpv", "--out", "{tmp}/x.zarr"],
     "--workers must be >= 0 and <= 256"),
    (["distill", "--cache", "{store}", "--workers", "100000"], "--workers must be >= 0 and <= 256"),
    (["evaluate", "{tmp}/run", "--workers", "100000"], "--workers must be >= 0 and <= 256"),
    (["evaluate", "{tmp}/run", "--device", "tpu"], "unknown --device 'tpu'"),
    (["cache", "verify", "{store}", "--teacher-check", "-5"], "--teacher-check must be >= 0"),
    (["distill", "--cache", "{store}", "--min-steps", "0", "--epochs", "1", "--student", "vit_tiny_patch16_224", "--image-size", "32"], "cannot run at --image-size 32"),
    (["distill", "--cache", "{store}", "--image-size", "100000"], "larger than 2048"),
    (["distill", "--cache", "{store}", "--student-weights", "{truncated}"], "not a readable safetensors file"),
    (["extract", "--teacher", TINY_TEACHER, "--weights", "{truncated}", "--data", "elpv", "--out", "{tmp}/x.zarr"],
     "not a readable safetensors file"),
])
def test_bad_input_is_one_line_exit_2(args, needle, tiny_store, tmp_path):
    (tmp_path / "f.zarr").write_text("not a store")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(tmp_path / "w.safetensors"))
    truncated = tmp_path / "w.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:40])  # an interrupted copy
    filled = [a.format(tmp=tmp_path, store=tiny_store, file=tmp_path / "f.zarr", truncated=truncated) for a in args]
    one_error_line(invoke(*filled), needle)  # in-process (fast); test_bad_input_in_a_real_process: a real one


def test_bad_input_in_a_real_process(tmp_path):
    one_error_line(customkd("distill", "--min-steps", "0", "--cache", str(tmp_path / "none.zarr")), "does not exist")


def test_incomplete_cache_is_refused(tiny_store, tmp_path):
    import shutil

    from customkd.contract import store as fs

    copy = tmp_path / "half.zarr"
    shutil.copytree(tiny_store, copy)
    group = zarr.open_group(str(copy), mode="r+")
    group["done"][2] = 0
    group["teacher_done_t0"][2] = 0
    fs.set_status(group, fs.STATUS_IN_PROGRESS)
    one_error_line(invoke("distill", "--min-steps", "0", "--cache", str(copy)), "incomplete (3/4 shards done)")


def test_help_lists_commands():
    result = customkd("--help")
    assert result.returncode == 0
    for command in ("extract", "distill", "teachers", "cache"):
        assert command in result.stdout


def test_refused_distill_leaves_no_run_directory(tmp_path):
    invoke("distill", "--min-steps", "0", "--cache", str(tmp_path / "absent.zarr"), "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def _commands(group, prefix=""):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_every_command_has_verbose_quiet_and_help_on_every_option():
    import typer.main

    from customkd.cli.app import app

    for name, command in _commands(typer.main.get_command(app)):
        options = {p.name: p for p in command.params if p.param_type_name == "option"}
        assert {"verbose", "quiet"} <= set(options), name
        assert all(option.help for option in options.values()), (name, [o for o, p in options.items() if not p.help])
        assert command.help, name


def test_commands_with_a_config_take_each_option_from_its_field():
    """extract, distill, compare and report declare each option once, on their config's field (its help text and
    default), and build the command from it; report keeps its one-way switches --no-docs and --quick."""
    import dataclasses

    import typer.main

    from customkd.cli.app import app
    from customkd.featcache.config import ExtractConfig
    from customkd.report.config import CompareConfig, ReportConfig
    from customkd.trainer.config import DistillConfig

    commands = dict(_commands(typer.main.get_command(app)))
    for name, config in (("extract", ExtractConfig), ("distill", DistillConfig), ("compare", CompareConfig),
                         ("report", ReportConfig)):
        options = {p.name: p for p in commands[name].params if p.param_type_name == "option"}
        for field in dataclasses.fields(config):
            if name == "extract" and field.name == "recipe":  # built from --color-jitter and --scale-min
                continue
            assert field.metadata.get("help") and options[field.name].help == field.metadata["help"], (name, field.name)
        assert set(options) - {f.name for f in dataclasses.fields(config)} <= {"config", "verbose", "quiet",
                                                                               "color_jitter", "scale_min"}, name
    report = {p.name: p for p in commands["report"].params}
    assert (report["no_docs"].opts, report["no_docs"].secondary_opts) == (["--no-docs"], [])
    assert (report["quick"].opts, report["quick"].secondary_opts) == (["--quick"], [])
    assert report["out"].default == ReportConfig.out == ReportConfig().out


def test_version_is_the_package_version():
    import importlib.metadata

    result = customkd("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"customkd {importlib.metadata.version('customkd')}"


def test_import_customkd_is_quick_and_exposes_the_library(tmp_path):
    code = ("import sys, customkd; assert 'torch' not in sys.modules; "
            "print(sorted(customkd.__all__), customkd.extract.__module__, customkd.distill.__module__, "
            "customkd.evaluate.__name__, customkd.predict.__name__, customkd.compare.__module__, "
            "customkd.CompareConfig.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("]")[0] + "]" == str(
        ["CompareConfig", "DistillConfig", "ExtractConfig", "UserError", "compare", "distill", "evaluate", "extract",
         "predict"])
    assert ("customkd.featcache.extract customkd.trainer.distill evaluate_run predict_images "
            "customkd.report.store_compare CompareConfig") in result.stdout


def test_import_customkd_works_beside_modules_named_like_its_parts(tmp_path):
    """Everything installed lives under ``customkd.``: a user's own common.py, cli.py, report.py or trainer.py in
    the working folder (first on the import path) does not shadow any of it."""
    for name in ("common", "cli", "report", "trainer", "featcache"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    code = ("import customkd\nfrom customkd.trainer.config import DistillConfig\nfrom customkd.cli.app import app\n"
            "print(customkd.DistillConfig is DistillConfig, customkd.distill.__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "customkd.trainer.distill"]


def test_help_imports_no_torch(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from customkd.cli.app import app\n"
            "for args in (['--help'], ['extract', '--help'], ['distill', '--help'], ['predict', '--help'],\n"
            "             ['compare', '--help']):\n"
            "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules and 'zarr' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env=cli_env(), timeout=120)
    assert result.returncode == 0, result.stderr


def test_an_unlabeled_domain_name_reaches_the_terminal_escaped(tiny_folder, tmp_path):
    """A store's unlabeled domain is named by whoever extracted it; ``cache verify`` and ``distill`` log the data
    spec holding it (``INFO contract.datasets``) with escape sequences and bidi overrides written out."""
    import shutil

    flat = tmp_path / "unlabeled"
    flat.mkdir()
    for image in sorted(tiny_folder.rglob("*.png"))[:4]:
        shutil.copy(image, flat / f"{image.parent.name}-{image.name}")
    store, name = tmp_path / "s.zarr", "roll\x1b[2J\u202e"
    assert invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{tiny_folder}",
                  "--unlabeled", f"{name}=folder:{flat}", "--out", store, "--views", "2", "--workers", "0",
                  "--shard-size", "8").exit_code == 0
    verified = invoke("cache", "verify", store)
    trained = invoke("distill", "--cache", store, "--out", tmp_path / "run", "--setting", "ssl", "--min-steps", "0",
                     "--student", TINY_STUDENT, "--epochs", "1", "--image-size", "32", "--batch-size", "8",
                     "--workers", "0", "--labels-per-class", "2")
    for result in (verified, trained):
        assert result.exit_code == 0, result.output
        assert "unlabeled:roll\\x1b[2J\\u202e=" in result.output
        assert "\x1b" not in result.output and "\u202e" not in result.output


def test_every_log_line_escapes_the_names_it_quotes(tmp_path):
    """A bad image named with an escape sequence, skipped by ``extract --skip-bad``: the warning naming it (as
    every log line) writes the sequence out instead of sending it to the terminal."""
    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=2, per_class=3)
    (folder / "class1" / "bad\x1b[2J\u202e.png").write_bytes(b"not an image")
    result = invoke("extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{folder}",
                    "--out", tmp_path / "s.zarr", "--views", "1", "--workers", "0", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "class1/bad\\x1b[2J\\u202e.png" in result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output


def test_an_error_during_an_epoch_is_printed_after_its_progress_bar_is_cleared(tiny_store, tmp_path):
    """A loss that becomes NaN mid-epoch (``--kd-temperature 1e-300``) ends the run while the epoch's bar is open:
    the bar is cleared before the error line, so nothing printed after it (tqdm's ``\\r`` and blanks when the bar
    closed at exit) erases the line on a terminal."""
    result = invoke("distill", "--cache", tiny_store, "--out", tmp_path / "run", "--method", "kd", "--kd-temperature",
                    "1e-300", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items()))
    one_error_line(result, "became nan")
    before, after = result.stderr.split("error: loss term")
    assert "\r" not in after and before.endswith(("\r", "\n")), repr(result.stderr[-300:])  # a line of its own
