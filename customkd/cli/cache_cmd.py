"""``customkd cache info | verify | export | import | push | pull``: look into, convert and share stores."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from customkd.cli.common import Quiet, Verbose, run_or_exit, setup_logging

app = typer.Typer(no_args_is_help=True, help="Inspect, check, convert and share feature stores (push/pull to object storage).")


@app.command()
def info(path: Annotated[str, typer.Argument(help="Store path.")],
         as_json: Annotated[bool, typer.Option("--json", help="Print the whole manifest as JSON.")] = False,
         verbose: Verbose = False, quiet: Quiet = False) -> None:
    """Manifest summary: dataset, N/V, views recipe, classes and labeled rows per split, size, status, fingerprint,
    and per teacher its D, input size, tap, precision, status and bytes."""
    setup_logging(verbose, quiet)
    from customkd.common.errors import one_line, printable
    from customkd.featcache.cache_ops import store_info

    summary = run_or_exit(lambda: store_info(path))
    if as_json:  # ensure_ascii escapes every control character
        typer.echo(json.dumps(_cut_strings(summary["manifest"]), indent=2, ensure_ascii=True))
        return
    for key, value in summary.items():
        if key not in ("manifest", "components"):
            typer.echo(f"{key:<16} {one_line(value)}")
    for name, body in summary["components"].items():
        typer.echo(f"  {printable(name):<14} {json.dumps(body, ensure_ascii=True)[:150]}")


def _cut_strings(value, limit: int = 2000):
    """``value`` (parsed JSON) with every string longer than ``limit`` cut in the middle, saying how long it was: a
    manifest's strings are short, and a forged megabyte-long one must not flood the terminal."""
    if isinstance(value, dict):
        return {_cut_strings(k, limit): _cut_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut_strings(v, limit) for v in value]
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit // 2]} … ({len(value)} characters, cut) … {value[-limit // 2:]}"
    return value


@app.command()
def verify(
    path: Annotated[str, typer.Argument(help="Store path.")],
    data: Annotated[str | None, typer.Option(help="Dataset spec if the images moved.")] = None,
    teacher_check: Annotated[int, typer.Option(help="Re-run each teacher on N random stored views (0 = off).")] = 0,
    weights: Annotated[str | None, typer.Option(help="Teacher weights file for --teacher-check.")] = None,
    teacher: Annotated[str | None, typer.Option(help="Check only this teacher's arrays (and the shared ones).")] = None,
    verbose: Verbose = False,
    quiet: Quiet = False,
) -> None:
    """Every object of every array present and readable (checksums), non-finite features, shard flags, labels
    against the dataset, sample keys, image content hashes; exit 1 on a problem."""
    setup_logging(verbose, quiet)
    from customkd.common.errors import printable
    from customkd.featcache.cache_ops import verify_store

    problems = run_or_exit(lambda: verify_store(path, data, teacher_check, weights, teacher))
    for problem in problems:
        typer.echo(f"problem: {printable(problem)}")
    typer.echo("ok: every check passed" if not problems else f"{len(problems)} problem(s) found")
    raise typer.Exit(1 if problems else 0)


@app.command("export")
def export(path: Annotated[str, typer.Argument(help="Complete store path.")],
           h5: Annotated[str, typer.Option("--h5", help="HDF5 file to write.")],
           verbose: Verbose = False, quiet: Quiet = False) -> None:
    """Write a single-file HDF5 copy (same arrays, manifest as an attribute)."""
    setup_logging(verbose, quiet)
    from customkd.featcache.cache_ops import export_h5

    run_or_exit(lambda: export_h5(path, h5))
    typer.echo(f"wrote {h5}")


@app.command("import")
def import_(h5: Annotated[str, typer.Argument(help="HDF5 file written by `cache export`.")],
            path: Annotated[str, typer.Argument(help="New store path.")],
            verbose: Verbose = False, quiet: Quiet = False) -> None:
    """Rebuild a Zarr store from an HDF5 export."""
    setup_logging(verbose, quiet)
    from customkd.featcache.cache_ops import import_h5

    run_or_exit(lambda: import_h5(h5, path))
    typer.echo(f"wrote {path}")


def _report_copy(result) -> None:
    if result.status == "unchanged":
        typer.echo(f"{result.dest} already holds this store, complete: nothing copied")
        return
    typer.echo(f"copied {result.source} -> {result.dest}: {result.objects_copied} object(s), "
               f"{result.bytes_copied / 2**20:.1f} MiB ({result.objects_skipped} already there); fingerprint verified")


@app.command()
def push(local: Annotated[str, typer.Argument(help="Complete local store.")],
         url: Annotated[str, typer.Argument(help="Destination URL, e.g. s3://bucket/path.zarr.")],
         verbose: Verbose = False, quiet: Quiet = False) -> None:
    """Copy a complete store to object storage (resumable; the manifest goes last, then it is verified).

    Credentials and endpoint come from the environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or
    AWS_PROFILE), and CUSTOMKD_S3_ENDPOINT or AWS_ENDPOINT_URL for an S3-compatible server."""
    setup_logging(verbose, quiet)
    from customkd.featcache.remote import push as push_store

    _report_copy(run_or_exit(lambda: push_store(local, url)))


@app.command()
def pull(url: Annotated[str, typer.Argument(help="Complete store URL, e.g. s3://bucket/path.zarr.")],
         local: Annotated[str, typer.Argument(help="Local destination path.")],
         verbose: Verbose = False, quiet: Quiet = False) -> None:
    """Copy a complete store from object storage to a local path (resumable, verified)."""
    setup_logging(verbose, quiet)
    from customkd.featcache.remote import pull as pull_store

    _report_copy(run_or_exit(lambda: pull_store(url, local)))
