"""SIGKILL the real CLI at random moments of an extraction; rerunning must give the same bytes."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import ROOT, TINY_TEACHER, cli_env, customkd, make_tiny_hue_folder, store_bytes


def _args(folder: Path, out: Path) -> list[str]:
    return ["extract", "--teacher", TINY_TEACHER, "--weights", "random", "--data", f"folder:{folder}", "--out",
            str(out), "--views", "4", "--shard-size", "6", "--batch-size", "8", "--workers", "0"]


def _run(folder: Path, out: Path) -> None:
    done = customkd(*_args(folder, out))
    assert done.returncode == 0, done.stderr[-2000:]


def _kill_when_done_flags(folder: Path, out: Path, flags: int, extra_delay: float) -> int:
    """Start an extraction and SIGKILL it once ``flags`` shards are done (plus a random delay)."""
    proc = subprocess.Popen([sys.executable, "-m", "customkd.cli", *_args(folder, out)], env=cli_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = out / "done" / "c"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= flags:
            break
        time.sleep(0.01)
    time.sleep(extra_delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(list(done_dir.iterdir())) if done_dir.is_dir() else 0


def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    folder = make_tiny_hue_folder(tmp_path / "imgs", classes=3, per_class=16)  # 48 images → 8 shards of 6
    reference = tmp_path / "reference.zarr"
    _run(folder, reference)
    expected = store_bytes(reference)
    rng = np.random.default_rng(1)
    killed_mid_way = 0
    for trial in range(3):
        out = tmp_path / f"trial{trial}.zarr"
        flags_at_kill = _kill_when_done_flags(folder, out, int(rng.integers(1, 7)), float(rng.uniform(0, 0.05)))
        killed_mid_way += 0 < flags_at_kill < 8
        if out.exists() and (out / "zarr.json").exists():
            done = np.array([(out / "done" / "c" / str(i)).exists() for i in range(8)])
            # every shard flagged done already holds its final bytes
            for shard in np.flatnonzero(done):
                part = f"features_t0/c/{shard}/0/0"
                assert (out / part).read_bytes() == expected[part], f"trial {trial}: shard {shard} done without data"
        _run(folder, out)
        assert store_bytes(out) == expected, f"trial {trial} differs after resume"
        assert not list(out.rglob("*.partial")), "temporary files left behind"
    assert killed_mid_way >= 1, "no trial was killed mid-way; the test did not exercise resume"
