"""What a run records for reuse (timm name, preprocessing, provenance), its TensorBoard scalars, and the
Ctrl-C message that says exactly how to continue."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY_STUDENT, cli_env, customkd


@pytest.fixture(scope="module")
def customkd_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    done = customkd("distill", "--min-steps", "0", "--cache", str(tiny_store), "--student", TINY_STUDENT, "--method",
                    "customkd", "--labels-per-class", "2", "--epochs", "3", "--image-size", "32", "--batch-size", "8",
                    "--workers", "0", "--out", str(run))
    assert done.returncode == 0, done.stderr
    assert "ETA" in done.stderr  # the per-epoch line
    return run


def test_config_records_what_reuse_needs(customkd_run, tiny_store):
    import timm
    from safetensors.torch import load_file

    config = json.loads((customkd_run / "config.json").read_text())
    assert (config["student"], config["student_alias"]) == ("test_efficientnet", TINY_STUDENT)
    assert config["preprocess"] == {"size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                    "interpolation": "bilinear", "crop": 0.875}
    provenance = config["provenance"]
    assert provenance["versions"]["torch"] and provenance["versions"]["customkd"] != "absent"
    assert provenance["command"][1:3] == ["distill", "--min-steps"] and provenance["started"].startswith("20")
    assert provenance["inputs"]["cache"]["path"] == str(tiny_store.resolve()) == config["cache"]
    assert len(provenance["inputs"]["cache"]["store_identity"]) >= 16
    assert "git_commit" in provenance
    assert oct((customkd_run / "student.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    model = timm.create_model(config["student"], num_classes=config["num_classes"])
    model.load_state_dict(load_file(str(customkd_run / "student.safetensors")))  # timm alone rebuilds the student


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_tensorboard_and_metrics_csv_have_every_scalar(customkd_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(customkd_run.glob("events.out.tfevents.*"))
    assert len(events) == 1
    accumulator = EventAccumulator(str(customkd_run))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/general", "train/specific", "eval/accuracy", "eval/balanced_accuracy", "lr",
            "epoch_seconds", "customize/loss"} <= tags, tags
    assert [e.step for e in accumulator.Scalars("eval/accuracy")] == [1, 2, 3]
    metrics = json.loads((customkd_run / "metrics.json").read_text())
    steps = accumulator.Scalars("step/loss")  # 24 training rows in batches of 8: 3 steps an epoch
    assert [e.step for e in steps] == list(range(1, 10)) and {"step/general", "step/specific", "step/task"} <= tags
    for epoch, record in enumerate(metrics["epochs"]):  # the epoch's mean is the mean of its steps (equal batches)
        assert sum(e.value for e in steps[3 * epoch : 3 * epoch + 3]) / 3 == pytest.approx(record["train"]["loss"],
                                                                                          rel=1e-5)
    text = accumulator.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text.removeprefix("```json\n").removesuffix("\n```"))["method"] == "customkd"
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["method"].string_value == "customkd" and hparams["epochs"].number_value == 3
    header = (customkd_run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "lr" in header and "epoch_seconds" in header


def test_ctrl_c_says_exactly_how_to_continue(tiny_store, tmp_path):
    run = tmp_path / "run"
    args = ["distill", "--min-steps", "0", "--cache", str(tiny_store), "--student", TINY_STUDENT, "--method", "kd",
            "--epochs", "8", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--out", str(run)]
    process = subprocess.Popen([sys.executable, "-m", "customkd.cli", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                               env=cli_env())
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.pt").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("interrupted;")]
    assert lines, stderr[-3000:]
    line = lines[-1]
    command = shlex.join([sys.executable, "-m", "customkd.cli", "distill"])  # how this process was started
    assert f"the run is in {run}; continue it with: {command} " in line and line.endswith("--resume")
    continued = subprocess.run(shlex.split(line.split("continue it with: ")[1]), cwd=ROOT, capture_output=True,
                               text=True, env=cli_env(), timeout=300)  # exactly as printed
    assert continued.returncode == 0, continued.stderr
    assert len(json.loads((run / "metrics.json").read_text())["epochs"]) == 8


def test_a_full_disk_under_tensorboard_is_one_line_and_never_hides_the_runs_error(tmp_path, caplog):
    """TensorBoard raises its writer thread's OSError on the next flush or close: the flush's is one line naming
    the run; the close's (in distill's ``finally``, where it would replace the error being reported) a warning."""
    import errno

    from customkd.common.errors import UserError
    from customkd.trainer.tracking import Tracker

    class FullDisk:
        def add_scalar(self, *args, **kwargs) -> None:
            pass

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        close = flush

    tracker = Tracker(tmp_path, enabled=False)
    tracker.writer = FullDisk()
    with pytest.raises(UserError, match=f"writing TensorBoard events in {tmp_path} failed \\(No space left on device\\)"):
        tracker.log_epoch({"epoch": 1, "train": {"loss": 1.0}})
    tracker.close()
    assert "closing TensorBoard events" in caplog.text
