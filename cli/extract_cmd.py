"""``customkd extract`` and ``customkd teachers``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import is_main_process, run_or_exit, setup_logging


def extract(
    teacher: Annotated[str, typer.Option(help="Teacher name (see `customkd teachers`), timm:<model> or open_clip:<arch>:<tag>.")] = "efficientnet_lite0",
    data: Annotated[str, typer.Option(help="Dataset: elpv, folder:PATH or cifar100:PATH.")] = "elpv",
    out: Annotated[str, typer.Option(help="Store path (a .zarr directory).")] = "caches/elpv-efficientnet_lite0.zarr",
    views: Annotated[int, typer.Option(help="Views per sample; view 0 is the centre view.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Teacher batch size in images.")] = 32,
    workers: Annotated[int, typer.Option(help="DataLoader workers for decoding and view replay.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Base seed of the view parameters.")] = 0,
    weights: Annotated[str | None, typer.Option(help="Local weights: a .safetensors/.pth file (timm, Meta DINOv2/v3, OpenCLIP full or visual-only) or a Hugging Face model folder; 'random' for random init.")] = None,
    teacher_size: Annotated[int | None, typer.Option(help="Teacher input size in px (default: the entry's, see `customkd teachers`; position embeddings are resampled).")] = None,
    tap: Annotated[str | None, typer.Option(help="Teacher feature: cls, mean, cls+mean (ViTs), pooled (CNNs, timm's own pooling) or embed (CLIP/SigLIP/PE); default per entry.")] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.")] = "auto",
    color_jitter: Annotated[float, typer.Option(help="Colour jitter strength of random views (0 = off).")] = 0.0,
    scale_min: Annotated[float, typer.Option(help="Smallest random-resized-crop area fraction.")] = 0.35,
    shard_size: Annotated[int, typer.Option(help="Samples per shard (unit of writing and resume).")] = 256,
    compress: Annotated[bool, typer.Option(help="Zstd-compress chunks (fp16 features barely compress).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store built with a different fingerprint.")] = False,
    skip_bad: Annotated[bool, typer.Option(help="Record unreadable images as invalid samples instead of stopping.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the frozen teacher once over every view of a dataset and write the Zarr feature store."""
    setup_logging(verbose)

    def action():
        from featcache.extract import ExtractConfig
        from featcache.extract import extract as run_extract
        from featcache.views import ViewRecipe

        recipe = ViewRecipe(scale=(scale_min, 1.0), color_jitter=color_jitter)
        cfg = ExtractConfig(teacher=teacher, data=data, out=out, views=views, batch_size=batch_size, workers=workers,
                            device=device, seed=seed, weights=weights, teacher_size=teacher_size, tap=tap,
                            precision=precision, shard_size=shard_size, compress=compress, overwrite=overwrite,
                            skip_bad=skip_bad, recipe=recipe)
        return run_extract(cfg)

    result = run_or_exit(lambda: _with_value_errors(action))
    if not is_main_process():
        return
    n, v, d = result.shape
    verb = "already complete, nothing to do" if result.status == "unchanged" else f"complete in {result.seconds:.0f}s"
    typer.echo(f"store {result.path}: N={n} V={v} D={d}, {verb}")


def _with_value_errors(action):
    from featcache.errors import UserError

    try:
        return action()
    except ValueError as exc:  # dataclass validation of recipes
        raise UserError(str(exc)) from None


def teachers() -> None:
    """List the registered teachers (and the generic forms)."""
    from featcache.teachers import GENERIC_FORMS, list_teachers

    typer.echo(f"{'name':<21} {'dim':>5} {'size':>5} {'native':>6}  {'tap':<7} source")
    for name, spec in list_teachers():
        source = f"{spec.library}:{spec.model}" + (f":{spec.pretrained}" if spec.pretrained else "")
        typer.echo(f"{name:<21} {spec.feature_dim:>5} {spec.size:>5} {spec.native_size:>6}  {spec.tap:<7} {source}")
    typer.echo("size: the default --teacher-size; native: the size the weights were trained at. dim is D at the "
               "default --tap (cls+mean doubles it).")
    typer.echo("generic: " + ", ".join(GENERIC_FORMS))
