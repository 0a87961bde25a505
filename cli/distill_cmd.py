"""``customkd distill``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import is_main_process, run_or_exit, setup_logging


def _domains(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def distill(
    cache: Annotated[str, typer.Option(help="Feature store written by `customkd extract`.")] = "caches/elpv-efficientnet_lite0.zarr",
    student: Annotated[str, typer.Option(help="Student: mobilenetv3, mobilenetv3_small, resnet18, efficientnet_b0 or any timm name.")] = "mobilenetv3",
    student_pretrained: Annotated[bool, typer.Option(help="Start from timm's pretrained student weights (hub).")] = False,
    student_weights: Annotated[str | None, typer.Option(help="Start from a local student weights file.")] = None,
    method: Annotated[str, typer.Option(help="student, fitnet, kd, kd+fitnet, dkd, customkd, customkd+dkd.")] = "customkd",
    setting: Annotated[str, typer.Option(help="supervised, ssl or uda.")] = "ssl",
    labels_per_class: Annotated[int | None, typer.Option(help="SSL: labeled samples per class.")] = None,
    label_fraction: Annotated[float | None, typer.Option(help="SSL: fraction of training labels kept (default 0.1).")] = None,
    ssl: Annotated[str, typer.Option(help="none or fixmatch (unlabeled objective in L_task).")] = "none",
    fixmatch_threshold: Annotated[float, typer.Option(help="FixMatch confidence threshold τ.")] = 0.95,
    source: Annotated[str, typer.Option(help="UDA: labeled source domain(s), comma-separated.")] = "",
    target: Annotated[str, typer.Option(help="UDA: unlabeled target domain(s), comma-separated.")] = "",
    epochs: Annotated[int, typer.Option(help="Student (KD) epochs (at least; see --min-steps).")] = 8,
    min_steps: Annotated[int, typer.Option(help="Small datasets: add epochs until this many optimizer steps.")] = 250,
    image_size: Annotated[int, typer.Option(help="Student input resolution.")] = 96,
    batch_size: Annotated[int, typer.Option()] = 64,
    out: Annotated[str, typer.Option(help="Run directory (default runs/<method>-<student>-<time>).")] = "",
    seed: Annotated[int, typer.Option()] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader workers replaying views.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    lr: Annotated[float | None, typer.Option(help="Learning rate (adamw 2e-3, sgd 0.05).")] = None,
    weight_decay: Annotated[float, typer.Option()] = 0.05,
    lambda_general: Annotated[float, typer.Option(help="λ_g, weight of MSE(P_s(f_s), f_t).")] = 1.0,
    lambda_specific: Annotated[float, typer.Option(help="λ_s, weight of MSE(f_s, θ^h_t(f_t)).")] = 1.0,
    customizer: Annotated[str, typer.Option(help="linear or mlp.")] = "linear",
    customizer_lr: Annotated[float, typer.Option()] = 1e-3,
    customizer_activation: Annotated[str, typer.Option(help="student (θ^h_t's output through the student's output activation: reachable targets) or none.")] = "student",
    customizer_weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on θ^h_t (bounds its scale).")] = 0.05,
    customizer_reset: Annotated[bool, typer.Option(help="Re-initialise θ^h_t before every customization epoch.")] = False,
    customize_smoothing: Annotated[float, typer.Option(help="Label smoothing of the customization loss.")] = 0.1,
    customize_warmup: Annotated[int, typer.Option(help="KD epochs before the first customization epoch.")] = 1,
    customize_head: Annotated[str, typer.Option(help="student, random (fixed random head, ablation) or random-trained (random head trained with θ^h_t, ablation).")] = "student",
    customize_target: Annotated[str, typer.Option(help="labels+pseudo, labels or soft.")] = "labels+pseudo",
    pseudo_threshold: Annotated[float, typer.Option()] = 0.8,
    alternate_every: Annotated[int, typer.Option(help="One customization epoch every K KD epochs.")] = 1,
    kd_temperature: Annotated[float, typer.Option()] = 4.0,
    feature_norm: Annotated[str, typer.Option(help="none, l2 or standardize (teacher features).")] = "standardize",
    view_sampling: Annotated[str, typer.Option(help="cycle or random.")] = "cycle",
    features: Annotated[str, typer.Option(help="auto, ram or stream (read teacher features by shard blocks).")] = "auto",
    allow_stale: Annotated[bool, typer.Option(help="Train even if the dataset no longer matches the store.")] = False,
    expect_fingerprint: Annotated[str, typer.Option(help="Refuse the cache unless its components match, e.g. 'teacher=4f498eb6'.")] = "",
    data: Annotated[str | None, typer.Option(help="Dataset spec if the images moved since extraction.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a student from images plus cached teacher features."""
    setup_logging(verbose)

    def action():
        from trainer.config import DistillConfig
        from trainer.distill import distill as run_distill

        cfg = DistillConfig(
            cache=cache, student=student, student_pretrained=student_pretrained, student_weights=student_weights,
            method=method, setting=setting, labels_per_class=labels_per_class,
            label_fraction=label_fraction, ssl=ssl, fixmatch_threshold=fixmatch_threshold, source=_domains(source), target=_domains(target), epochs=epochs, min_steps=min_steps,
            image_size=image_size, batch_size=batch_size, out=out, seed=seed, workers=workers, device=device,
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, lambda_general=lambda_general,
            lambda_specific=lambda_specific, customizer=customizer, customizer_lr=customizer_lr,
            customizer_activation=customizer_activation, customizer_weight_decay=customizer_weight_decay,
            customizer_reset=customizer_reset, customize_smoothing=customize_smoothing,
            customize_warmup=customize_warmup, customize_head=customize_head, customize_target=customize_target, pseudo_threshold=pseudo_threshold,
            alternate_every=alternate_every, kd_temperature=kd_temperature, feature_norm=feature_norm,
            view_sampling=view_sampling, features=features, allow_stale=allow_stale, expect_fingerprint=expect_fingerprint,
            data=data, resume=resume)
        return run_distill(cfg)

    result = run_or_exit(action)
    if not is_main_process():
        return
    final, probe = result.final, result.teacher_probe
    typer.echo(f"run {result.run_dir} ({result.seconds:.0f}s): {method} / {student} / {setting}")
    typer.echo(f"  student accuracy {final['accuracy']:.4f}  balanced accuracy {final['balanced_accuracy']:.4f}")
    typer.echo(f"  teacher probe accuracy {probe['accuracy']:.4f} ({probe['n_labeled']} labeled samples)")
