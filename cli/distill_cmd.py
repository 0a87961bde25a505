"""``customkd distill``."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from typing import Annotated

import typer

from cli.common import Quiet, Verbose, config_defaults, run_or_exit, setup_logging
from cli.config_file import merge_config_file
from common.distributed import is_main_process
from trainer.config import (
    CUSTOMIZE_TARGETS,
    CUSTOMIZER_INITS,
    CUSTOMIZER_OPTIMIZERS,
    CUSTOMIZERS,
    DEFAULT_EPOCHS,
    DEFAULT_LABEL_FRACTION,
    EVAL_SPLITS,
    FEATURE_NORMS,
    METHOD_NAMES,
    OPTIMIZERS,
    SETTINGS,
    SPECIFIC_LOSSES,
    SPECIFIC_SPACES,
    VIEW_SAMPLING,
    DistillConfig,
)
from trainer.run_folder import CONFIG as RUN_CONFIG
from trainer.run_folder import has_checkpoint


def _resume_hint(out: str | None) -> str:
    """The exact command that continues an interrupted run."""
    from pathlib import Path

    args = sys.argv[1:]
    if "--out" not in args and not any(a.startswith("--out=") for a in args) and out is not None:
        args += ["--out", out]
    if out is None or not has_checkpoint(Path(out)):
        return f"no epoch was saved yet; start again with: customkd {shlex.join(args)}"
    if "--resume" not in args:
        args.append("--resume")
    return f"the run is in {out}; continue it with: customkd {shlex.join(args)}"


def _domains(value: str | tuple) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, tuple) else tuple(v for v in value.split(",") if v)


D = config_defaults(DistillConfig)


def distill(
    ctx: typer.Context,
    cache: Annotated[str, typer.Option(help="Feature store written by `customkd extract`.")] = D["cache"],
    config: Annotated[str | None, typer.Option(help=f"YAML/TOML file of settings (keys = option names with underscores), or a run's {RUN_CONFIG} to replay it; flags override it.")] = None,
    student: Annotated[str, typer.Option(help="Student: an alias from `customkd students` or any timm model name.")] = D["student"],
    student_pretrained: Annotated[bool, typer.Option(help="Start from timm's pretrained student weights (hub).")] = D["student_pretrained"],
    student_weights: Annotated[str | None, typer.Option(help="Start from a local student weights file.")] = D["student_weights"],
    method: Annotated[str, typer.Option(help=f"{', '.join(METHOD_NAMES)}.")] = D["method"],
    setting: Annotated[str, typer.Option(help=f"{', '.join(SETTINGS)}.")] = D["setting"],
    labels_per_class: Annotated[int | None, typer.Option(help="SSL: labeled samples per class.")] = D["labels_per_class"],
    label_fraction: Annotated[float | None, typer.Option(help=f"SSL: fraction of training labels kept (default {DEFAULT_LABEL_FRACTION}).")] = D["label_fraction"],
    ssl: Annotated[str, typer.Option(help="none or fixmatch (unlabeled objective in L_task).")] = D["ssl"],
    fixmatch_threshold: Annotated[float, typer.Option(help="FixMatch confidence threshold τ.")] = D["fixmatch_threshold"],
    fixmatch_weight: Annotated[float, typer.Option(help="Weight of FixMatch's unlabeled loss.")] = D["fixmatch_weight"],
    source: Annotated[str, typer.Option(help="UDA: labeled source domain(s), comma-separated.")] = ",".join(D["source"]),
    target: Annotated[str, typer.Option(help="UDA: unlabeled target domain(s), comma-separated.")] = ",".join(D["target"]),
    epochs: Annotated[int | None, typer.Option(help=f"Student (KD) epochs, exactly (default: {DEFAULT_EPOCHS}, extended on small data to --min-steps).")] = D["epochs"],
    min_steps: Annotated[int, typer.Option(help="Without --epochs: add epochs until this many optimizer steps.")] = D["min_steps"],
    image_size: Annotated[int, typer.Option(help="Student input resolution in px.")] = D["image_size"],
    batch_size: Annotated[int, typer.Option(help="Samples per optimizer step (all ranks together).")] = D["batch_size"],
    out: Annotated[str, typer.Option(help="Run directory (default runs/<method>-<student>-<time>).")] = D["out"],
    seed: Annotated[int, typer.Option(help="Seed of the label budget, initialisation, batch order and views.")] = D["seed"],
    workers: Annotated[int, typer.Option(help="DataLoader workers replaying views.")] = D["workers"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = D["device"],
    optimizer: Annotated[str, typer.Option(help=f"{' or '.join(OPTIMIZERS)}.")] = D["optimizer"],
    lr: Annotated[float | None, typer.Option(help=f"Learning rate (default {', '.join(f'{k} {v:g}' for k, v in OPTIMIZERS.items())}).")] = D["lr"],
    weight_decay: Annotated[float, typer.Option(help="Weight decay of the student's optimizer.")] = D["weight_decay"],
    grad_clip: Annotated[float, typer.Option(help="Clip the gradient norm to this (0 = off).")] = D["grad_clip"],
    lambda_general: Annotated[float | None, typer.Option(help="λ_g, weight of MSE(P_s(f_s), f_t) (default: 1 for fitnet and kd+fitnet, 0.1 for the customkd methods).")] = D["lambda_general"],
    lambda_specific: Annotated[float, typer.Option(help="λ_s, weight of MSE(f_s, θ^h_t(f_t)).")] = D["lambda_specific"],
    customizer: Annotated[str, typer.Option(help=f"{' or '.join(CUSTOMIZERS)}.")] = D["customizer"],
    customizer_lr: Annotated[float, typer.Option(help="Learning rate of θ^h_t during customization.")] = D["customizer_lr"],
    customizer_activation: Annotated[str, typer.Option(help="student (θ^h_t's output through the student's output activation: reachable targets) or none.")] = D["customizer_activation"],
    customizer_weight_decay: Annotated[float, typer.Option(help="Weight decay on θ^h_t.")] = D["customizer_weight_decay"],
    customizer_reset: Annotated[bool, typer.Option(help="Re-initialise θ^h_t before every customization epoch.")] = D["customizer_reset"],
    customizer_init: Annotated[str, typer.Option(help=f"{' or '.join(CUSTOMIZER_INITS)}: θ^h_t's initial output layer (zero: directions L_cus never sets stay 0).")] = D["customizer_init"],
    customizer_optimizer: Annotated[str, typer.Option(help=f"{' or '.join(CUSTOMIZER_OPTIMIZERS)} for θ^h_t (sgd: momentum 0.9, --customizer-lr).")] = D["customizer_optimizer"],
    customize_epochs: Annotated[int, typer.Option(help="Customization epochs per round.")] = D["customize_epochs"],
    specific_space: Annotated[str, typer.Option(help=f"{' or '.join(SPECIFIC_SPACES)}: compare f_s with θ^h_t(f_t) in all dims, or only in the head's row space.")] = D["specific_space"],
    specific_loss: Annotated[str, typer.Option(help=f"{' or '.join(SPECIFIC_LOSSES)}: the task-specific term's distance.")] = D["specific_loss"],
    customize_smoothing: Annotated[float, typer.Option(help="Label smoothing of the customization loss.")] = D["customize_smoothing"],
    customize_warmup: Annotated[int, typer.Option(help="KD epochs before the first customization epoch.")] = D["customize_warmup"],
    customize_head: Annotated[str, typer.Option(help="student, random (fixed random head, ablation) or random-trained (random head trained with θ^h_t, ablation).")] = D["customize_head"],
    customize_target: Annotated[str, typer.Option(help=f"{', '.join(CUSTOMIZE_TARGETS)}.")] = D["customize_target"],
    pseudo_threshold: Annotated[float, typer.Option(help="Teacher-probe confidence needed to use a pseudo-label.")] = D["pseudo_threshold"],
    alternate_every: Annotated[int, typer.Option(help="One customization epoch every K KD epochs.")] = D["alternate_every"],
    kd_temperature: Annotated[float, typer.Option(help="Temperature T of the soft targets (kd, dkd).")] = D["kd_temperature"],
    kd_weight: Annotated[float, typer.Option(help="Weight of the logit-distillation term (kd, dkd).")] = D["kd_weight"],
    dkd_alpha: Annotated[float, typer.Option(help="DKD: weight α of the target-class term.")] = D["dkd_alpha"],
    dkd_beta: Annotated[float, typer.Option(help="DKD: weight β of the non-target-class term.")] = D["dkd_beta"],
    dkd_warmup: Annotated[int, typer.Option(help="DKD: epochs over which its weight ramps up.")] = D["dkd_warmup"],
    feature_norm: Annotated[str, typer.Option(help=f"{', '.join(FEATURE_NORMS)} (teacher features).")] = D["feature_norm"],
    view_sampling: Annotated[str, typer.Option(help=f"{' or '.join(VIEW_SAMPLING)}.")] = D["view_sampling"],
    features: Annotated[str, typer.Option(help="auto, ram or stream (read teacher features by shard blocks).")] = D["features"],
    allow_stale: Annotated[bool, typer.Option(help="Train even if the dataset no longer matches the store.")] = D["allow_stale"],
    expect_fingerprint: Annotated[str, typer.Option(help="Refuse the cache unless its components match, e.g. 'teacher=4f498eb6'.")] = D["expect_fingerprint"],
    data: Annotated[str | None, typer.Option(help="Dataset spec if the images moved since extraction.")] = D["data"],
    eval_split: Annotated[str, typer.Option(help=f"{' or '.join(EVAL_SPLITS)}: evaluate on the held-out test rows, or on a fixed 20 % of the training rows (left out of training) to choose settings without touching the test rows.")] = D["eval_split"],
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = D["resume"],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Train a student from images plus cached teacher features."""
    setup_logging(verbose, quiet)
    values = {name: value for name, value in locals().items() if name in D}
    settings: dict = {}

    def action():
        from trainer.distill import default_run_dir
        from trainer.distill import distill as run_distill

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
    typer.echo(f"  teacher probe accuracy {probe['accuracy']:.4f} ({probe['n_labeled']} labeled samples)")
