"""``customkd distill``."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, config_command, run_or_exit, setup_logging
from customkd.cli.config_file import merge_config_file
from customkd.common.distributed import is_main_process
from customkd.trainer.config import DistillConfig
from customkd.trainer.run_folder import CONFIG as RUN_CONFIG
from customkd.trainer.run_folder import has_checkpoint


def invoked_as() -> list[str]:
    """This process's program as a command that runs again as shown, from the same directory: ``customkd`` when
    that is what PATH finds, the script's own path otherwise (``.venv/bin/customkd``), or ``python -m
    customkd.cli`` with this interpreter."""
    import shutil
    from pathlib import Path

    program = Path(sys.argv[0])
    if program.name != "customkd":
        return [sys.executable, "-m", "customkd.cli"]
    on_path = shutil.which("customkd")
    return ["customkd"] if on_path and Path(on_path).resolve() == program.resolve() else [sys.argv[0]]


def _resume_hint(out: str | None) -> str:
    """The exact command that continues an interrupted run."""
    from pathlib import Path

    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args) and out is not None:
        args += ["--out", out]
    if out is None or not has_checkpoint(Path(out)):
        return f"no epoch was saved yet; start again with: {shlex.join(invoked_as() + args)}"
    if "--resume" not in args:
        args.append("--resume")
    return f"the run is in {out}; continue it with: {shlex.join(invoked_as() + args)}"


def _domains(value: str | tuple) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, tuple) else tuple(v for v in value.split(",") if v)


@config_command(DistillConfig)
def distill(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(help=f"YAML/TOML file of settings (keys = option names with underscores), or a run's {RUN_CONFIG} to replay it; flags override it.")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
    **values,
) -> None:
    """Train a student from images plus cached teacher features."""
    setup_logging(verbose, quiet)
    settings: dict = {}

    def action():
        from customkd.trainer.distill import default_run_dir
        from customkd.trainer.distill import distill as run_distill

        settings.update(merge_config_file(ctx, values, config))
        settings.update(source=_domains(settings["source"]), target=_domains(settings["target"]))
        cfg = DistillConfig(**settings)
        settings["out"] = cfg.out or default_run_dir(cfg)  # named now, so Ctrl-C can say where to resume
        return run_distill(dataclasses.replace(cfg, out=settings["out"]))

    result = run_or_exit(action, interrupted=lambda: _resume_hint(settings.get("out")))
    if not is_main_process() or quiet:
        return
    final, probe = result.final, result.teacher_probe
    typer.echo(f"run {result.run_dir} ({result.seconds:.0f}s): {settings['method']} / {settings['student']} / "
               f"{settings['setting']}")
    typer.echo(f"  student accuracy {final['accuracy']:.4f}  balanced accuracy {final['balanced_accuracy']:.4f}")
    if "chosen_epoch" in final:  # --val-fraction: the student is the best epoch's by validation accuracy
        last = final["last"]
        typer.echo(f"  (epoch {final['chosen_epoch']}, best validation accuracy {final['val_accuracy']:.4f}; last "
                   f"epoch {last['epoch']}: accuracy {last['accuracy']:.4f}  balanced accuracy "
                   f"{last['balanced_accuracy']:.4f})")
    typer.echo(f"  teacher probe accuracy {probe['accuracy']:.4f} ({probe['n_labeled']} labeled samples)")
