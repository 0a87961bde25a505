"""``--config FILE``: YAML/TOML settings for extract and distill, a run replayed from its config.json, and the
config dataclasses as the one source of the command line's defaults."""

import dataclasses
import json
import os

import pytest
import typer.main

from customkd.common.errors import UserError
from tests.conftest import ROOT, TINY_STUDENT, TINY_TEACHER, customkd, invoke, one_error_line


def _settings(run) -> dict:
    config = json.loads((run / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in ("out", "provenance")}  # where and when it ran


def test_extract_and_distill_from_yaml_then_replay_from_config_json(tiny_folder, tmp_path):
    store = tmp_path / "store.zarr"
    (tmp_path / "extract.yaml").write_text(
        f"teacher: {TINY_TEACHER}\nweights: random\ndata: folder:{tiny_folder}\nout: {store}\nviews: 2\n"
        "workers: 0\nshard_size: 8\nchunk_size: 4\nscale_min: 0.5\n")
    done = customkd("extract", "--config", str(tmp_path / "extract.yaml"))
    assert done.returncode == 0, done.stderr
    assert "N=30 V=2 D=64" in done.stdout
    manifest = json.loads((store / "zarr.json").read_text())["attributes"]["customkd"]
    assert manifest["fingerprint"]["augmentation"]["recipe"]["scale"] == [0.5, 1.0]

    (tmp_path / "distill.yaml").write_text(
        f"cache: {store}\nstudent: {TINY_STUDENT}\nmethod: kd\nlabels_per_class: 2\nepochs: 1\nmin_steps: 0\n"
        "image_size: 32\nbatch_size: 8\nworkers: 0\nkd_weight: 0.5\ndkd_beta: 4\n")
    first = tmp_path / "first"
    done = customkd("distill", "--config", str(tmp_path / "distill.yaml"), "--epochs", "2", "--out", str(first))
    assert done.returncode == 0, done.stderr
    settings = _settings(first)
    assert (settings["method"], settings["kd_weight"], settings["dkd_beta"]) == ("kd", 0.5, 4.0)  # from the file
    assert settings["epochs"] == 2  # the flag wins over the file's 1

    replay = tmp_path / "replay"
    done = customkd("distill", "--config", str(first / "config.json"), "--out", str(replay))
    assert done.returncode == 0, done.stderr
    assert _settings(replay) == settings  # every setting and every recorded value
    assert json.loads((replay / "metrics.json").read_text())["final"] == \
        json.loads((first / "metrics.json").read_text())["final"]
    assert (replay / "student.safetensors").read_bytes() == (first / "student.safetensors").read_bytes()


def test_toml_config_and_its_errors(tiny_store, tmp_path):
    (tmp_path / "bad.toml").write_text('labels_per_clas = 4\n')
    result = customkd("distill", "--cache", str(tiny_store), "--config", str(tmp_path / "bad.toml"))
    one_error_line(result, "unknown key 'labels_per_clas' in --config")
    assert "labels_per_class" in result.stderr  # the known keys are listed
    (tmp_path / "type.yaml").write_text("epochs: many\n")
    one_error_line(customkd("distill", "--cache", str(tiny_store), "--config", str(tmp_path / "type.yaml")),
                     "epochs must be an integer, got 'many'")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    one_error_line(customkd("distill", "--config", str(tmp_path / "list.yaml")), "must hold a mapping")
    one_error_line(customkd("extract", "--config", str(tmp_path / "absent.yaml")), "does not exist")
    (tmp_path / "broken.toml").write_text("epochs = [\n")
    one_error_line(customkd("extract", "--config", str(tmp_path / "broken.toml")), "cannot be parsed")
    (tmp_path / "code.yaml").write_text("teacher: !!python/object/apply:os.system ['echo pwned']\n")
    one_error_line(customkd("extract", "--config", str(tmp_path / "code.yaml")), "cannot be parsed")


@pytest.mark.parametrize("command, config_class", [("distill", "customkd.trainer.config.DistillConfig"),
                                                    ("extract", "customkd.featcache.config.ExtractConfig")])
def test_every_setting_has_a_flag_with_the_dataclass_default(command, config_class):
    import importlib

    from customkd.cli.app import app

    module, name = config_class.rsplit(".", 1)
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    group = typer.main.get_command(app)
    options = {p.name: p for p in group.commands[command].params if p.param_type_name == "option"}
    for field in fields.values():
        if field.name == "recipe":  # the view recipe's settings are --scale-min and --color-jitter
            continue
        assert field.name in options, f"{field.name} has no --{field.name.replace('_', '-')}"
        default = options[field.name].default
        expected = field.default
        if options[field.name].multiple:  # a repeatable option: none given is the empty tuple
            assert default in (None, []) and expected == (), field.name
            continue
        assert (",".join(expected) if isinstance(expected, tuple) else expected) == default, field.name
    for option in options.values():
        assert option.help, f"--{option.name} has no help text"


def test_makefile_names_the_cache_with_extracts_defaults_and_passes_only_what_is_set():
    import re
    import subprocess

    from customkd.featcache.config import ExtractConfig

    makefile = (ROOT / "Makefile").read_text()
    defaults = dict(re.findall(r"^(TEACHER|DATA) \?= (\S+)$", makefile, flags=re.M))
    assert (defaults["TEACHER"], defaults["DATA"]) == (ExtractConfig().teacher, ExtractConfig().data)
    assert f"caches/{ExtractConfig().data}-{ExtractConfig().teacher}.zarr" == ExtractConfig().out
    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed-x", "distill", "METHOD=kd"], capture_output=True,
                         text=True, cwd=ROOT).stdout
    command = " ".join(line.strip(" \\\t") for line in dry.splitlines() if line.strip(" \\\t"))
    assert "--method kd" in command and "--epochs" not in command and "--student" not in command


@pytest.mark.parametrize("data, teacher", [
    ("elpv", "efficientnet_lite0"), ("folder:/x/shapes/", "efficientnet_lite0"), ("folder:/x/shapes", "dinov2_vits"),
    ("folder:shapes", "timm:vit_small_patch16_224"), ("cifar100:/d/c100", "open_clip:hf-hub:timm/ViT-B-16-SigLIP")])
def test_makefile_and_report_name_a_cache_alike(data, teacher):
    import subprocess

    from customkd.report.config import default_cache

    dry = subprocess.run(["make", "-n", "-o", ".venv/.installed-x", "distill", f"DATA={data}", f"TEACHER={teacher}"],
                         capture_output=True, text=True, cwd=ROOT).stdout
    cache = dry.split("--cache ", 1)[1].split()[0]
    assert cache == default_cache(data, teacher) and "/-" not in cache and ":" not in cache


BILLION_LAUGHS = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["teacher: *i", ""])


def test_alias_bombs_and_huge_values_are_refused_in_bounded_time_and_output(tmp_path):
    from customkd.common.config_file import read_config_file

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)  # ~450 bytes that expand to 9**9 strings
    with pytest.raises(UserError, match="anchors or aliases"):
        read_config_file(str(bomb))
    (tmp_path / "anchor.yaml").write_text("epochs: &e 3\n")
    with pytest.raises(UserError, match="anchors or aliases"):
        read_config_file(str(tmp_path / "anchor.yaml"))

    large = tmp_path / "large.yaml"
    large.write_text("epochs: 1\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(UserError, match="larger than"):
        read_config_file(str(large))

    # A value or key that is long but within the size bound is echoed shortened, not in full.
    (tmp_path / "long.yaml").write_text(f"epochs: [{', '.join(['many'] * 20000)}]\n")
    line = one_error_line(invoke("distill", "--config", tmp_path / "long.yaml"), "epochs must be an integer")
    assert len(line) < 600, len(line)
    (tmp_path / "key.json").write_text(json.dumps({"k" * 100000: 1}))
    line = one_error_line(invoke("distill", "--config", tmp_path / "key.json"), "unknown key")
    assert len(line) < 2000, len(line)


def test_a_config_path_that_is_no_regular_file_is_named_as_such(tmp_path):
    """A link to /dev/zero, a pipe, a folder named like a config: one line saying what it is (not "does not
    exist"), without reading from it."""
    os.mkfifo(tmp_path / "pipe.toml")
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    (tmp_path / "folder.json").mkdir()
    for name in ("pipe.toml", "zero.yaml", "folder.json"):
        one_error_line(invoke("distill", "--config", tmp_path / name), "is not a regular file")


def test_a_declared_option_reaches_the_command_line_the_config_file_and_the_run_record(tmp_path):
    """One field added to the config (here in a subclass) is a flag with its help and panel, a config-file key
    converted to its type, and a key of the run's record, with no other edit."""
    import dataclasses

    import typer
    from typer.testing import CliRunner

    from customkd.cli.common import config_command
    from customkd.common.options import option
    from customkd.trainer.config import DistillConfig
    from customkd.trainer.methods.options import CUSTOMKD

    @dataclasses.dataclass(frozen=True)
    class Extended(DistillConfig):
        customizer_momentum: float = option(0.9, "Momentum of θ^h_t's SGD (a new knob).", group=CUSTOMKD)

    app, seen = typer.Typer(), {}

    @app.command()
    @config_command(Extended)
    def run(ctx: typer.Context, **values) -> None:
        seen.update(values)

    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--customizer-momentum" in help_text and "a new knob" in help_text and CUSTOMKD in help_text
    assert CliRunner().invoke(app, ["--customizer-momentum", "0.5"]).exit_code == 0 and seen["customizer_momentum"] == 0.5
    (tmp_path / "c.yaml").write_text("customizer_momentum: 0.25\nlabels_per_class: 3\n")
    cfg = Extended.from_file(str(tmp_path / "c.yaml"), cache="x")
    assert cfg.customizer_momentum == 0.25 and cfg.labels_per_class == 3
    assert cfg.to_dict()["customizer_momentum"] == 0.25  # config.json is to_dict() plus what the run measured


def test_the_library_loads_a_config_file_and_replays_a_run_record(tmp_path):
    import customkd

    (tmp_path / "x.yaml").write_text("method: kd\nsource: [a, b]\nsetting: uda\ntarget: c\n")
    cfg = customkd.DistillConfig.from_file(str(tmp_path / "x.yaml"))
    assert (cfg.method, cfg.source, cfg.target) == ("kd", ("a", "b"), ("c",))
    record = {**cfg.to_dict(), "store_fingerprint": {}, "effective_epochs": 8, "n_train": 10, "out": "/elsewhere",
              "student": "mobilenetv3_large_100", "student_alias": "mobilenetv3"}
    (tmp_path / "config.json").write_text(__import__("json").dumps(record))
    assert customkd.DistillConfig.from_file(str(tmp_path / "config.json")) == dataclasses.replace(cfg, out="")
    (tmp_path / "bad.yaml").write_text("no_such_option: 1\n")
    with pytest.raises(customkd.UserError, match="unknown key 'no_such_option'"):
        customkd.DistillConfig.from_file(str(tmp_path / "bad.yaml"))


def test_timm_flag_names_are_aliases_and_a_typed_alias_wins_over_the_file(tmp_path):
    import typer
    from typer.testing import CliRunner

    from customkd.cli.common import config_command
    from customkd.cli.config_file import merge_config_file
    from customkd.trainer.config import DistillConfig

    app, seen = typer.Typer(), {}

    @app.command()
    @config_command(DistillConfig)
    def run(ctx: typer.Context, config: str | None = None, **values) -> None:
        seen.update(merge_config_file(ctx, values, config))

    (tmp_path / "c.yaml").write_text("student: resnet18\nbatch_size: 32\nimage_size: 64\n")
    args = ["--model", "mobilenetv3_small_050", "-b", "16", "-j", "0", "--clip-grad", "1.5", "--config",
            str(tmp_path / "c.yaml")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (seen["student"], seen["batch_size"], seen["workers"], seen["grad_clip"], seen["image_size"]) == (
        "mobilenetv3_small_050", 16, 0, 1.5, 64)  # typed aliases win; the file fills what was not typed
