"""``python -m bench.run`` (``make bench``): run every section, print the table, write the results.

Sections run in order on one generated JPEG folder: extraction (which also writes the store the
training sections read) → training throughput → the student against its physical limit (synthetic
batches, a plain timm-style loop, memory format, threads vs workers, device replay) → per-epoch loader overhead → teacher cost at its
default vs native size → peak memory (subprocesses) → allocator effect (subprocesses, CPU only) →
storage → store reads. Every metric is a ratio of timings from this run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.config import DOCS_PATH, RESULTS_DIR, BenchConfig, profile

log = logging.getLogger("bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and models (smoke test; numbers mean nothing)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where <stamp>.json and latest.json go")
    parser.add_argument("--docs", type=Path, default=None,
                        help=f"page whose results block is rewritten (default {DOCS_PATH} for full runs, none for --quick)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch the docs page")
    parser.add_argument("--teacher", default=None, help="override the profile's teacher (any customkd teacher name)")
    parser.add_argument("--student", default=None, help="override the profile's student")
    parser.add_argument("--repeats", type=int, default=None, help="timed extraction / store-read repetitions")
    parser.add_argument("--train-rounds", type=int, default=None, help="interleaved training rounds")
    return parser.parse_args(argv)


def run_sections(cfg: BenchConfig, work: Path) -> dict:
    """Every section's raw record, plus how long each section took."""
    from bench.add_teacher import measure_add_teacher
    from bench.contention import cpu_snapshot, foreign_cpu_share
    from bench.epoch_overhead import measure_epoch_overhead
    from bench.extraction import measure_extraction
    from bench.fixtures import make_image_folder
    from bench.limits import measure_limits
    from bench.memory import measure_allocator, measure_memory
    from bench.store_io import measure_reads, measure_storage
    from bench.teacher_size import measure_teacher_size
    from bench.training import measure_training
    from customkd.contract import store as fs

    raw: dict = {"config": cfg.to_dict(), "section_seconds": {}, "foreign_cpu_share": {}}

    def section(name: str, action: Callable[[], object]):
        log.info("section %s …", name)
        before = cpu_snapshot()
        value = action()
        after = cpu_snapshot()
        raw["section_seconds"][name] = round(after["wall"] - before["wall"], 2)
        raw["foreign_cpu_share"][name] = foreign_cpu_share(before, after)
        log.info("section %s: %.0f s, other processes used %s of the CPU", name, raw["section_seconds"][name],
                 raw["foreign_cpu_share"][name])
        return value

    folder = make_image_folder(work / "images", cfg.n_images)
    warmup = make_image_folder(work / "warmup-images", 8, seed=1)
    raw["extraction"], store = section("extraction", lambda: measure_extraction(cfg, folder, warmup, work))
    raw["add_teacher"] = section("add_teacher", lambda: measure_add_teacher(cfg, store, work))
    raw["training"] = section("training", lambda: measure_training(cfg, store))
    raw["limits"] = section("limits", lambda: measure_limits(cfg, store))
    raw["epoch_overhead"] = section("epoch_overhead", lambda: measure_epoch_overhead(cfg, store))
    raw["teacher_size"] = section("teacher_size", lambda: measure_teacher_size(cfg))
    raw["memory"] = section("memory", lambda: measure_memory(cfg, store))
    raw["allocator"] = section("allocator", lambda: measure_allocator(cfg, store))
    manifest = fs.read_manifest(fs.open_group(store, mode="r"), store)
    raw["storage"] = section("storage", lambda: measure_storage(cfg, manifest, store, work))
    raw["store_read"] = section("store_read", lambda: measure_reads(cfg, work / "synthetic-default.zarr"))
    return raw


def run_bench(cfg: BenchConfig, results_dir: Path, docs: Path | None) -> dict:
    """Run the suite; write ``results_dir/<stamp>.json`` + ``latest.json`` (and the docs block); return the result."""
    import torch

    from bench import tables
    from bench.timing import library_versions, machine_info

    started = time.perf_counter()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{cfg.device.replace(':', '')}"
    machine = machine_info(torch.device(cfg.device))
    (results_dir / "tmp").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=results_dir / "tmp")).resolve()
    try:
        raw = run_sections(cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    raw["wall_seconds"] = round(time.perf_counter() - started, 1)
    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {"machine": machine, "versions": library_versions(),
              "metrics": tables.build_metrics(raw, cfg.device.startswith("cuda")), "raw": raw}
    path = tables.write_results(result, results_dir, stamp)
    if docs is not None:
        tables.update_docs(docs, tables.docs_block(result, stamp))
    print(f"\ncustomkd bench ({'quick, ' if cfg.quick else ''}{cfg.device}) — {stamp}, {raw['wall_seconds']:.0f} s\n")
    print(tables.text_table(result["metrics"]))
    contended = [n for n in tables.contention_notes(raw) if "CONTENDED" in n]
    if contended:
        print("\nwarning: other processes were busy during " + "; ".join(contended) + " — rerun on a quieter machine")
    print(f"\nresults: {path} (and {results_dir / 'latest.json'})" + (f"; docs: {docs}" if docs else ""))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars of extract/train would drown the table
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("bench").setLevel(logging.INFO)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"error: --device {args.device} asked for CUDA but no GPU is visible; use --device cpu",
                  file=sys.stderr)
            return 2
    cfg = profile(args.device, args.quick, teacher=args.teacher, student=args.student, repeats=args.repeats,
                  train_rounds=args.train_rounds)
    docs = None if args.no_docs else (args.docs or (None if args.quick else DOCS_PATH))
    run_bench(cfg, args.results_dir, docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
