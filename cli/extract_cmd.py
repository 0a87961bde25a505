"""``customkd extract`` and ``customkd teachers``."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import Quiet, Verbose, config_defaults, run_or_exit, setup_logging
from cli.config_file import merge_config_file
from common.distributed import is_main_process
from featcache.config import ExtractConfig
from featcache.views import ViewRecipe

D = config_defaults(ExtractConfig)
R = config_defaults(ViewRecipe)


def extract(
    ctx: typer.Context,
    teacher: Annotated[str, typer.Option(help="Teacher name (see `customkd teachers`), timm:<model> or open_clip:<arch>:<tag>.")] = D["teacher"],
    data: Annotated[str, typer.Option(help="Dataset: elpv, digits, folder:PATH or cifar100:PATH.")] = D["data"],
    unlabeled: Annotated[list[str] | None, typer.Option(help="Images nobody labeled, stored beside the dataset with label -1: folder:PATH (a flat folder or any tree) or NAME=folder:PATH to name their domain; repeatable.")] = None,
    out: Annotated[str, typer.Option(help="Store path (a .zarr directory) or URL (s3://, gs://, file://).")] = D["out"],
    config: Annotated[str | None, typer.Option(help="YAML/TOML file of settings (keys = option names with underscores); flags override it.")] = None,
    views: Annotated[int, typer.Option(help="Views per sample; view 0 is the centre view.")] = D["views"],
    batch_size: Annotated[int, typer.Option(help="Teacher batch size in images.")] = D["batch_size"],
    workers: Annotated[int, typer.Option(help="DataLoader workers for decoding and view replay.")] = D["workers"],
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = D["device"],
    seed: Annotated[int, typer.Option(help="Base seed of the view parameters.")] = D["seed"],
    weights: Annotated[str | None, typer.Option(help="Local weights: a .safetensors/.pth file (timm, Meta DINOv2/v3, OpenCLIP full or visual-only) or a Hugging Face model folder; 'random' for random init.")] = D["weights"],
    teacher_size: Annotated[int | None, typer.Option(help="Teacher input size in px (default: the entry's, see `customkd teachers`; position embeddings are resampled).")] = D["teacher_size"],
    tap: Annotated[str | None, typer.Option(help="Teacher feature: cls, mean, cls+mean (ViTs), pooled (CNNs, timm's own pooling) or embed (CLIP/SigLIP/PE); default per entry.")] = D["tap"],
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.")] = D["precision"],
    color_jitter: Annotated[float, typer.Option(help="Colour jitter strength of random views (0 = off).")] = R["color_jitter"],
    scale_min: Annotated[float, typer.Option(help="Smallest random-resized-crop area fraction.")] = R["scale"][0],
    shard_size: Annotated[int, typer.Option(help="Samples per shard (unit of writing and resume).")] = D["shard_size"],
    chunk_size: Annotated[int, typer.Option(help="Samples per inner chunk (unit of reading).")] = D["chunk_size"],
    compress: Annotated[bool, typer.Option(help="Zstd-compress chunks (fp16 features barely compress).")] = D["compress"],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store built with a different fingerprint.")] = D["overwrite"],
    skip_bad: Annotated[bool, typer.Option(help="Record unreadable images as invalid samples instead of stopping.")] = D["skip_bad"],
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Run the frozen teacher once over every view of a dataset and write the Zarr feature store."""
    setup_logging(verbose, quiet)
    values = {name: value for name, value in locals().items() if name in D or name in ("color_jitter", "scale_min")}

    def action():
        from featcache.extract import extract as run_extract

        settings = merge_config_file(ctx, values, config)
        settings["unlabeled"] = tuple(settings["unlabeled"] or ())
        recipe = ViewRecipe(scale=(settings.pop("scale_min"), R["scale"][1]), color_jitter=settings.pop("color_jitter"))
        return run_extract(ExtractConfig(**settings, recipe=recipe))

    result = run_or_exit(lambda: _with_value_errors(action))
    if not is_main_process() or quiet:
        return
    n, v, d = result.shape
    verb = "already complete, nothing to do" if result.status == "unchanged" else f"complete in {result.seconds:.0f}s"
    typer.echo(f"store {result.path}: N={n} V={v} D={d}, {verb}")


def _with_value_errors(action):
    from common.errors import UserError

    try:
        return action()
    except ValueError as exc:  # dataclass validation of recipes
        raise UserError(str(exc)) from None


def teachers(verbose: Verbose = False, quiet: Quiet = False) -> None:
    """List the registered teachers (and the generic forms)."""
    setup_logging(verbose, quiet)
    from featcache.teachers import GENERIC_FORMS, list_teachers

    typer.echo(f"{'name':<21} {'dim':>5} {'size':>5} {'native':>6}  {'tap':<7} source")
    for name, spec in list_teachers():
        source = f"{spec.library}:{spec.model}" + (f":{spec.pretrained}" if spec.pretrained else "")
        typer.echo(f"{name:<21} {spec.feature_dim:>5} {spec.size:>5} {spec.native_size:>6}  {spec.tap:<7} {source}")
    typer.echo("size: the default --teacher-size; native: the size the weights were trained at. dim is D at the "
               "default --tap (cls+mean doubles it).")
    typer.echo("generic: " + ", ".join(GENERIC_FORMS))
