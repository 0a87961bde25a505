"""``customkd evaluate`` and ``customkd export``: use a finished run."""

from __future__ import annotations

from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, run_or_exit, setup_logging


def evaluate(
    run: Annotated[str, typer.Argument(help="Run directory written by `customkd distill`.")],
    data: Annotated[str | None, typer.Option(help="Evaluate on every sample of this dataset instead of the run's held-out split.")] = None,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Evaluate a saved student."""
    setup_logging(verbose, quiet)
    from customkd.trainer.config import UseConfig
    from customkd.trainer.evaluate import evaluate_run

    run_or_exit(lambda: UseConfig(device=device, workers=workers))
    metrics = run_or_exit(lambda: evaluate_run(run, data, workers, device))
    per_class = " ".join("-" if a is None else f"{a:.3f}" for a in metrics["per_class_accuracy"])
    typer.echo(f"{run}: accuracy {metrics['accuracy']:.4f}  balanced accuracy {metrics['balanced_accuracy']:.4f}  "
               f"(n={metrics['n']}; per class {per_class})")


def predict(
    run: Annotated[str, typer.Argument(help="Run directory written by `customkd distill`.")],
    images: Annotated[str, typer.Option(help="An image file or a folder of images (any tree), unlabeled.")],
    out: Annotated[str, typer.Option(help="CSV to write: path, predicted class, one probability per class.")],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers decoding images.")] = 2,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Predict classes of unlabeled images with a saved student."""
    setup_logging(verbose, quiet)
    from customkd.trainer.config import UseConfig
    from customkd.trainer.predict import predict_images

    run_or_exit(lambda: UseConfig(device, batch_size, workers))
    n = run_or_exit(lambda: predict_images(run, images, out, device, batch_size, workers))
    typer.echo(f"wrote {out}: {n} image(s)")


def export(
    run: Annotated[str, typer.Argument(help="Run directory written by `customkd distill`.")],
    onnx: Annotated[str, typer.Option("--onnx", help="ONNX file to write.")],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Export the deployable student (backbone + head) to ONNX and check it against PyTorch."""
    setup_logging(verbose, quiet)
    from customkd.trainer.evaluate import export_onnx

    error = run_or_exit(lambda: export_onnx(run, onnx))
    checked = "not checked (onnxruntime missing)" if error != error else f"max |ONNX - PyTorch| = {error:.2e}"
    typer.echo(f"wrote {onnx}: {checked}")
