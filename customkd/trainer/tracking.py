"""What a run records besides its metrics: where it came from (provenance) and TensorBoard scalars.

- ``provenance``: library versions, the git commit of the code when it is a checkout, the command line, the
  start time, and every input file by absolute path with a content hash (the store by its identity hash).
- ``Tracker``: one TensorBoard event file per run folder (``torch.utils.tensorboard``): a scalar for every
  numeric loss part, evaluation metric and method statistic (``Method.epoch_metrics``, a stage's record), plus
  ``lr`` and ``epoch_seconds``, per epoch; every KD step's loss parts as ``step/<part>`` (rank 0's batch); the
  run's settings as text (``config``) and as hyper-parameters (the HPARAMS tab, against the scored accuracy),
  written into the same event file the way Lightning's TensorBoardLogger does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import sys
from pathlib import Path

from customkd.common.errors import UserError
from customkd.common.provenance import file_sha256, git_commit, library_versions
from customkd.contract import store as fs
from customkd.contract.location import is_url
from customkd.trainer.run_folder import flatten, has_checkpoint

log = logging.getLogger(__name__)


def absolute(path: str) -> str:
    """A local path made absolute (a run can then be used from any directory); URLs unchanged."""
    return path if is_url(path) else str(Path(path).expanduser().resolve())


def provenance(cache: str, student_weights: str | None, started: dt.datetime) -> dict:
    inputs = {"cache": {"path": absolute(cache), "store_identity": fs.store_identity(cache)}}
    if student_weights:
        inputs["student_weights"] = {"path": absolute(student_weights), "sha256": file_sha256(student_weights)}
    return {"versions": library_versions(), "git_commit": git_commit(), "command": [Path(sys.argv[0]).name,
            *sys.argv[1:]], "started": started.isoformat(timespec="seconds"), "inputs": inputs}


def eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def scalars(record: dict) -> dict[str, float]:
    """Every finite number of an epoch record (not in a list, not an ``epoch`` count), by slash-joined key
    (``train/loss``, ``eval/accuracy`` …): the flattened record metrics.csv holds, numbers only."""
    return {name: float(value) for name, value in flatten(record, lists=False).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and name.rsplit("/", 1)[-1] != "epoch"}


class Tracker:
    """TensorBoard event files in the run folder (rank 0 only)."""

    def __init__(self, run: Path, enabled: bool) -> None:
        self.run, self.writer = run, None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run))

    def log_config(self, config: dict, scored: str) -> None:
        """The run's config.json as text, and its settings as hyper-parameters whose metrics are the per-epoch
        ``<scored>/accuracy`` and ``<scored>/balanced_accuracy`` scalars."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, default=str) + "\n```")
        settings = {k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in config.items()
                    if not isinstance(v, dict | list) or k in ("source", "target")}
        metrics = {f"{scored}/accuracy": math.nan, f"{scored}/balanced_accuracy": math.nan}
        for summary in hparams(settings, metrics):
            self.writer.file_writer.add_summary(summary)
        self._flush()

    def step_log(self, epoch: int, steps_per_epoch: int):
        """A :data:`trainer.loop.StepLog` writing ``step/<part>`` at global step ``epoch × steps + step + 1``."""
        if self.writer is None:
            return None

        def log(step: int, parts: dict[str, float]) -> None:
            for name, value in parts.items():
                if math.isfinite(value):
                    self.writer.add_scalar(f"step/{name}", value, global_step=epoch * steps_per_epoch + step + 1)
        return log

    def log_epoch(self, record: dict) -> None:
        if self.writer is None:
            return
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, global_step=record["epoch"])
        self._flush()

    def _flush(self) -> None:
        try:  # TensorBoard writes in a thread of its own and raises its OSError (a full disk) here
            self.writer.flush()
        except OSError as exc:
            then = "continue the run with --resume" if has_checkpoint(self.run) else "rerun the same command"
            raise UserError(f"writing TensorBoard events in {self.run} failed ({exc.strerror or exc}); free space, "
                            f"then {then}") from None

    def close(self) -> None:
        """Close the event file; a write that fails now is a warning, never an error hiding the run's own."""
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError as exc:
                log.warning("closing TensorBoard events in %s failed (%s)", self.run, exc.strerror or exc)
