"""``customkd extract`` and ``customkd teachers``."""

from __future__ import annotations

from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, config_command, config_defaults, run_or_exit, setup_logging
from customkd.cli.config_file import merge_config_file
from customkd.common.distributed import is_main_process
from customkd.contract.views import ViewRecipe
from customkd.featcache.config import ExtractConfig

R = config_defaults(ViewRecipe)


@config_command(ExtractConfig, skip=("recipe",))
def extract(
    ctx: typer.Context,
    config: Annotated[str | None, typer.Option(help="YAML/TOML file of settings (keys = option names with underscores); flags override it.")] = None,
    color_jitter: Annotated[float, typer.Option(help="Colour jitter strength of random views (0 = off).")] = R["color_jitter"],
    scale_min: Annotated[float, typer.Option(help="Smallest random-resized-crop area fraction.")] = R["scale"][0],
    verbose: Verbose = False,
    quiet: Quiet = False,
    **values,
) -> None:
    """Run the frozen teacher once over every view of a dataset and write the Zarr feature store."""
    setup_logging(verbose, quiet)
    values = {**values, "color_jitter": color_jitter, "scale_min": scale_min}

    def action():
        from customkd.featcache.extract import extract as run_extract

        settings = merge_config_file(ctx, values, config)
        settings["unlabeled"] = tuple(settings["unlabeled"] or ())
        recipe = ViewRecipe(scale=(settings.pop("scale_min"), R["scale"][1]), color_jitter=settings.pop("color_jitter"))
        return run_extract(ExtractConfig(**settings, recipe=recipe))

    result = run_or_exit(lambda: _with_value_errors(action))
    if not is_main_process() or quiet:
        return
    n, v, d = result.shape
    verb = "already complete, nothing to do" if result.status == "unchanged" else f"complete in {result.seconds:.0f}s"
    teacher = f" teacher {values['teacher']}" if values.get("into") else ""
    typer.echo(f"store {result.path}{teacher}: N={n} V={v} D={d}, {verb}")


def _with_value_errors(action):
    from customkd.common.errors import UserError

    try:
        return action()
    except ValueError as exc:  # dataclass validation of recipes
        raise UserError(str(exc)) from None


def teachers(verbose: Verbose = False, quiet: Quiet = False) -> None:
    """List the registered teachers (and the generic forms)."""
    setup_logging(verbose, quiet)
    from customkd.featcache.teachers import GENERIC_FORMS, list_teachers

    typer.echo(f"{'name':<21} {'dim':>5} {'size':>5} {'native':>6}  {'tap':<7} source")
    for name, spec in list_teachers():
        source = f"{spec.library}:{spec.model}" + (f":{spec.pretrained}" if spec.pretrained else "")
        typer.echo(f"{name:<21} {spec.feature_dim:>5} {spec.size:>5} {spec.native_size:>6}  {spec.tap:<7} {source}")
    typer.echo("size: the default --teacher-size; native: the size the weights were trained at. dim is D at the "
               "default --tap (cls+mean doubles it).")
    typer.echo("generic: " + ", ".join(GENERIC_FORMS))
