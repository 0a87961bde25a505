"""One training configuration in a fresh process: its peak memory and throughput.

Peak memory of a process is only honest from a fresh process: on CPU the high-water mark of the
resident set (``ru_maxrss`` / ``VmHWM``) never goes down, on CUDA ``max_memory_allocated`` counts
from the process start. The parent calls :func:`run_worker`; the child runs ``python -m bench.worker``
and prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

RESULT_PREFIX = "BENCH_RESULT "
REPO_ROOT = Path(__file__).resolve().parents[1]


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmHWM``, ``VmRSS``) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_memory(device) -> dict:
    """Peak memory of this process so far: RSS high-water mark on CPU, allocated GPU memory on CUDA.

    ``VmHWM`` is preferred to ``ru_maxrss``: Linux carries ``ru_maxrss`` across ``exec``, so a child
    started from a large parent reports at least the parent's RSS at fork time (seen here: three
    different configurations all reading the parent's 773 MiB). ``ru_maxrss`` is kept as a fallback.
    """
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    hwm = _proc_status_bytes("VmHWM")
    memory = {"vm_hwm_bytes": hwm, "ru_maxrss_bytes": maxrss,
              # forked DataLoader workers share the parent's pages, so this overstates them; for reference only
              "largest_child_maxrss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}
    if device.type == "cuda":
        import torch

        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
    memory["peak_bytes"] = memory.get("cuda_max_allocated_bytes", hwm if hwm is not None else maxrss)
    return memory


def child_main(spec: dict) -> dict:
    """Run ``spec["mode"]`` (student / cached / online) for ``spec["epochs"]`` timed epochs of ``spec["samples"]``."""
    import torch

    from bench.config import BenchConfig
    from bench.training import epoch_throughput

    cfg = BenchConfig(**spec["config"])
    device = torch.device(cfg.device)
    baseline = _proc_status_bytes("VmRSS")
    throughput = epoch_throughput(cfg, Path(spec["store"]), spec["mode"], spec["epochs"], spec["samples"],
                                  spec["warmup"])
    return {"mode": spec["mode"], "samples_s": throughput, "rss_after_imports_bytes": baseline,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""), **peak_memory(device)}


def run_worker(spec: dict, env: dict[str, str] | None = None, timeout: float = 900) -> dict:
    """Run one configuration in a fresh ``python -m bench.worker`` process; its result dict."""
    process = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(spec)], capture_output=True, text=True,
                             env=env, cwd=REPO_ROOT, timeout=timeout, check=False)
    for line in reversed(process.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join(process.stderr.splitlines()[-20:])
    raise RuntimeError(f"bench worker {spec['mode']} failed (exit {process.returncode}):\n{tail}")


def main() -> None:
    import torch

    torch.manual_seed(0)
    result = child_main(json.loads(sys.argv[1]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
