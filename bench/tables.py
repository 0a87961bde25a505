"""From raw timings to metrics, the printed table, the JSON result and the docs' table block."""

from __future__ import annotations

import json
import math
from pathlib import Path

from customkd.common.files import write_text

DOCS_BEGIN = "<!-- bench:results:begin (written by `make bench`; edit outside this block) -->"
DOCS_END = "<!-- bench:results:end -->"
INFO = "info"


def metric(name: str, value: float, op: str, threshold: float | None, target: str | None = None) -> dict:
    """``{"name", "value", "target", "pass"}``; ``pass`` is None for information-only rows."""
    if threshold is None:
        return {"name": name, "value": float(value), "target": INFO, "pass": None}
    passed = value >= threshold if op == ">=" else value <= threshold
    return {"name": name, "value": float(value), "target": target or f"{op} {threshold:g}", "pass": bool(passed)}


def build_metrics(raw: dict, gpu: bool) -> list[dict]:
    """The suite's ratios, each from timings of this run; targets from issues 6 and 14."""
    ext, train, memory = raw["extraction"], raw["training"], raw["memory"]
    ideal = train["ideal_cached_vs_online"]
    consumption = train["cached_samples_s"]  # rows/s the student trains on
    reads = raw["store_read"]
    metrics = [
        metric("extraction_efficiency", ext["ratio_steady"]["median"], ">=", 0.9),
        metric("extraction_efficiency_end_to_end", ext["ratio_end_to_end"]["median"], ">=", None),
        metric("add_teacher_efficiency", raw["add_teacher"]["ratio_steady"]["median"], ">=", None if gpu else 0.9),
        metric("cached_kd_vs_student_throughput", train["ratio_cached_vs_student"], ">=", 0.9),
        metric("cached_vs_online_throughput", train["ratio_cached_vs_online"], ">=", 0.9 * ideal,
               f">= {0.9 * ideal:.2f} (0.9 x ideal)"),
        metric("online_ideal_ratio", ideal, ">=", None),
        metric("peak_memory_cached_vs_student", memory["ratio_cached_vs_student"], "<=", 1.15),
        metric("peak_memory_online_vs_student", memory["ratio_online_vs_student"], "<=", None),
        metric("customization_vs_kd_epoch", train["ratio_customize_vs_kd_epoch"]["median"], "<=", 0.05),
        metric("reader_ram_vs_student", reads["ram_rows_s"]["median"] / consumption, ">=", 10),
        metric("reader_shard_blocks_vs_student", reads["shard_block_rows_s"]["median"] / consumption, ">=", 10),
        metric("reader_random_row_vs_student", reads["random_row_rows_s"]["median"] / consumption, ">=", 10),
        metric("storage_default_vs_2d", raw["storage"]["default"]["ratio_vs_2d"], "<=", 1.05),
        metric("storage_compress_vs_2d", raw["storage"]["compress"]["ratio_vs_2d"], "<=", 1.05),
    ]
    metrics += limit_metrics(raw.get("limits"), gpu)
    overhead = raw["epoch_overhead"]
    metrics += [
        metric("epoch_overhead_fraction", overhead["persistent"]["fraction"], "<=", 0.03),
        metric("epoch_overhead_fraction_fresh_workers", overhead["fresh"]["fraction"], "<=", None),
        metric("teacher_size_cost_ratio", raw["teacher_size"]["ratio_default_vs_native"], "<=", 0.2),
    ]
    if "speedup" in raw.get("allocator", {}):
        metrics.append(metric("allocator_tunables_speedup", raw["allocator"]["speedup"], ">=", None))
    return metrics


def limit_metrics(limits: dict | None, gpu: bool) -> list[dict]:
    """The student against the same model's train step on device-resident batches (issue 24, bench.limits)."""
    if not limits:
        return []
    metrics = [
        metric("student_step_vs_synthetic", limits["ratio_student_step_vs_synthetic"], ">=", 0.9),
        metric("replaying_student_step_vs_synthetic", limits["ratio_replaying_vs_synthetic"], ">=", None),
        metric("synthetic_vs_timm_train", limits["ratio_synthetic_vs_plain"], ">=", 0.9),
        metric("loader_capacity_vs_synthetic", limits["ratio_workers_loader_vs_synthetic"], ">=", 1.5 if gpu else None),
        metric("device_replay_fast_vs_workers_loader", limits["ratio_replay_fast_vs_workers_loader"], ">=", None),
        metric("device_replay_exact_vs_workers_loader", limits["ratio_replay_exact_vs_workers_loader"], ">=", None),
        metric("channels_last_vs_nchw_train", limits["ratio_channels_last_vs_nchw"], ">=", None),
    ]
    if "ratio_2workers_vs_default" in limits:
        metrics += [metric("one_worker_one_thread_vs_default", limits["ratio_1worker_1thread_vs_default"], ">=", None),
                    metric("two_workers_vs_default", limits["ratio_2workers_vs_default"], ">=", None)]
    return metrics


def contention_notes(raw: dict) -> list[str]:
    """Which timings had to use samples taken while other processes were busy (bench.contention)."""
    used = {"extraction repetitions": raw["extraction"].get("repetitions", {}),
            "add-teacher repetitions": raw.get("add_teacher", {}).get("repetitions", {})}
    used.update({f"{k} steps": v for k, v in raw["training"].get("steps", {}).items()})
    used.update({f"limits {k} steps": v for k, v in raw.get("limits", {}).get("steps", {}).items()})
    notes = [f"{name}: {info['used']}/{info['of']} used" + (" (CONTENDED: too few quiet samples, all used)"
                                                           if info.get("contended") else "")
             for name, info in used.items() if info]
    return notes


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def verdict(m: dict) -> str:
    return INFO if m["pass"] is None else ("pass" if m["pass"] else "MISS")


def shortfall(m: dict) -> str:
    """How far a missed metric is from its target, e.g. ``0.85 vs >= 0.9: 5.6 % short``."""
    threshold = float(m["target"].split()[1])
    gap = (threshold - m["value"]) / threshold if m["target"].startswith(">=") else (m["value"] - threshold) / threshold
    return f"{format_value(m['value'])} vs {m['target']}: {100 * gap:.1f} % {'short' if m['target'].startswith('>=') else 'over'}"


def text_table(metrics: list[dict]) -> str:
    rows = [("metric", "measured", "target", "result")]
    rows += [(m["name"], format_value(m["value"]), m["target"], verdict(m)) for m in metrics]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(metrics: list[dict]) -> str:
    lines = ["| metric | measured | target | result |", "|---|---:|---|---|"]
    lines += [f"| `{m['name']}` | {format_value(m['value'])} | {m['target']} | {verdict(m)} |" for m in metrics]
    return "\n".join(lines)


def write_results(result: dict, results_dir: Path, stamp: str) -> Path:
    """``results_dir/<stamp>.json`` and ``results_dir/latest.json``; returns the stamped path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    path = results_dir / f"{stamp}.json"
    write_text(path, text)
    write_text(results_dir / "latest.json", text)
    return path


def docs_block(result: dict, stamp: str) -> str:
    """The generated part of docs/benchmarks.md: run header, table, misses and headline raw numbers."""
    machine, raw, metrics = result["machine"], result["raw"], result["metrics"]
    misses = [f"- `{m['name']}`: {shortfall(m)}" for m in metrics if m["pass"] is False]
    ext, train, mem = raw["extraction"], raw["training"], raw["memory"]
    mib = 2**20
    lines = [
        DOCS_BEGIN,
        f"Run `{stamp}` on {machine['device']} — {machine['cpu']} ({machine['cpu_count']} cores, "
        f"{machine.get('gpu', 'no GPU')}), `GLIBC_TUNABLES={machine['glibc_tunables'] or '(unset)'}`, "
        f"load average at start {machine.get('load_average_start')}, suite wall time {raw['wall_seconds']:.0f} s.",
        "", markdown_table(metrics), "",
        "Missed targets: " + ("none." if not misses else ""), *misses, "",
        "Headline raw numbers (medians):", "",
        f"- teacher `{ext['teacher']}` at {ext['teacher_size']} px, batch {ext['batch_images']}: alone "
        f"{ext['teacher_alone_img_s']['median']:.1f} img/s; extract pipeline {ext['pipeline_steady_img_s']['median']:.1f}"
        f" img/s steady, {ext['pipeline_end_to_end_img_s']['median']:.1f} img/s end to end "
        f"({ext['until_first_batch_s']['median']:.1f} s until the first teacher batch)",
        f"- student `{train['student']}` at {train['image_size']} px, batch {train['batch_size']}: "
        f"{train['student_samples_s']:.1f} samples/s alone, {train['cached_samples_s']:.1f} cached "
        f"CustomKD, {train['online_samples_s']:.1f} online KD (teacher alone at that batch "
        f"{train['teacher_alone_img_s_at_train_batch']:.1f} img/s); customization epoch "
        f"{train['customize_epoch_s']['median']:.3f} s vs KD epoch {train['kd_epoch_s']['median']:.1f} s "
        f"({train['samples_per_epoch']} samples)",
        f"- peak memory ({mem['measure']}): student {mem['student']['peak_bytes'] / mib:.0f} MiB, cached "
        f"{mem['cached']['peak_bytes'] / mib:.0f} MiB, online {mem['online']['peak_bytes'] / mib:.0f} MiB",
        f"- store reads: RAM {raw['store_read']['ram_rows_s']['median']:,.0f}, shard blocks "
        f"{raw['store_read']['shard_block_rows_s']['median']:,.0f}, random rows "
        f"{raw['store_read']['random_row_rows_s']['median']:,.0f} rows/s",
        *_overhead_lines(raw),
        _storage_line(raw["storage"]),
        *_allocator_line(raw.get("allocator", {})),
        "- CPU taken by other processes while each section ran (share of all cores): "
        + ", ".join(f"{k} {v if v is not None else 'n/a'}" for k, v in raw.get("foreign_cpu_share", {}).items()),
        "- samples timed while other processes used <= 10 % of the CPU: " + "; ".join(contention_notes(raw)),
        DOCS_END,
    ]
    return "\n".join(lines)


def _overhead_lines(raw: dict) -> list[str]:
    overhead, size = raw["epoch_overhead"], raw["teacher_size"]
    modes = {k: overhead[k] for k in ("persistent", "fresh")}
    ms = {k: 1000 * v["median"] for k, v in size["seconds_per_image"].items()}
    return [f"- per-epoch loader overhead ({overhead['train_samples']} training + {overhead['eval_samples']} "
            f"evaluation samples, {overhead['workers']} workers, epochs 2-{overhead['epochs']}): "
            + "; ".join(f"{v['overhead_s']['median']:.2f} s of a {v['epoch_s']['median']:.1f} s epoch with "
                        f"{'persistent workers' if k == 'persistent' else 'fresh workers per epoch'}"
                        for k, v in modes.items()),
            f"- teacher `{size['teacher']}` forward, batch {size['batch_images']}: {ms['default']:.1f} ms/img at its "
            f"default {size['default_size']} px, {ms['native']:.1f} ms/img at its native {size['native_size']} px"]


def _storage_line(storage: dict) -> str:
    parts = [f"D={storage['shape'][2]}: default {storage['default']['ratio_vs_2d']:.3f}, "
             f"--compress {storage['compress']['ratio_vs_2d']:.3f}"]
    if "at_teacher_dim_default" in storage:
        parts.append(f"D={storage['at_teacher_dim_default']['shape'][2]}: default "
                     f"{storage['at_teacher_dim_default']['ratio_vs_2d']:.3f}, --compress "
                     f"{storage['at_teacher_dim_compress']['ratio_vs_2d']:.3f}")
    shape = storage["extracted_store"]["shape"]
    parts.append(f"the extracted {shape[0]}x{shape[1]}x{shape[2]} store: {storage['extracted_store']['ratio_vs_2d']:.3f}")
    return (f"- storage, bytes per view ÷ 2D (N={storage['shape'][0]}, V={storage['shape'][1]}): "
            + "; ".join(parts))


def _allocator_line(allocator: dict) -> list[str]:
    if "speedup" not in allocator:
        return []
    off, on = allocator["default"], allocator["tunables_on"]
    return [f"- allocator: student {off['samples_s']['median']:.1f} samples/s with glibc's default, "
            f"{on['samples_s']['median']:.1f} with `GLIBC_TUNABLES` ({allocator['speedup']:.2f}x); peak RSS "
            f"{off['peak_bytes'] / 2**20:.0f} vs {on['peak_bytes'] / 2**20:.0f} MiB"]


def update_docs(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (create a minimal page when it does not exist yet)."""
    if path.exists() and DOCS_BEGIN in (text := path.read_text()) and DOCS_END in text:
        before, rest = text.split(DOCS_BEGIN, 1)
        after = rest.split(DOCS_END, 1)[1]
        write_text(path, before + block + after)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "# Benchmarks\n\nReproduce with `make bench` (CPU) or `make bench DEVICE=cuda`.\n\n"
                    "## Latest results\n\n" + block + "\n")
