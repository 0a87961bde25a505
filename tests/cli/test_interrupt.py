"""Ctrl-C at any moment of a real ``customkd`` process: one line, exit 130 (or the command's own ending, had it
finished first), never a traceback."""

import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY_RUN, cli_env, invoke


def _interrupted_after(seconds: float, *args) -> subprocess.CompletedProcess:
    """``customkd ARGS`` in a real process, sent SIGINT ``seconds`` after it started."""
    process = subprocess.Popen([sys.executable, "-m", "customkd.cli", *map(str, args)], cwd=ROOT, env=cli_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# How a shell sees a process Ctrl-C ended: exit code 130, or death by SIGINT (the shell's $? is 130 too), which
# `python -m` chooses on its own after a KeyboardInterrupt passed through code a C extension ran (PyRun_String)
INTERRUPTED = (130, -signal.SIGINT)


def _before_the_program(result: subprocess.CompletedProcess) -> bool:
    """Whether SIGINT came while the interpreter itself was still starting (runpy locating the module, before the
    first line of ``customkd`` ran and could install its handler): Python's own KeyboardInterrupt traceback, every
    frame of it frozen interpreter code. A loaded machine stretches that window past 0.05 s."""
    frames = [line for line in result.stderr.splitlines() if line.lstrip().startswith('File "')]
    return (result.returncode in INTERRUPTED and result.stderr.rstrip().endswith("KeyboardInterrupt")
            and bool(frames) and all('File "<frozen ' in line for line in frames))


def _assert_one_line_ending(result: subprocess.CompletedProcess, finished: str) -> None:
    if _before_the_program(result):
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    if result.returncode in INTERRUPTED:
        assert lines[0].startswith("interrupted"), result.stderr
    else:  # SIGINT came after the command had ended its work: its own ending, untouched
        assert result.returncode == 2 and finished in lines[0], (result.returncode, result.stderr)


@pytest.mark.parametrize("seconds", [0.05, 0.2, 0.5, 0.9, 1.5])
def test_ctrl_c_while_the_program_starts_is_one_line(seconds, tmp_path):
    # evaluate imports typer, then torch and timm, then refuses the missing run: SIGINT lands in each phase
    result = _interrupted_after(seconds, "evaluate", tmp_path / "missing-run")
    _assert_one_line_ending(result, "is not a finished run")


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_ctrl_c_early_in_distill_is_one_line(seconds, tiny_store, tmp_path):
    options = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_RUN.items()]
    result = _interrupted_after(seconds, "distill", "--quiet", "--cache", tiny_store, "--out", tmp_path / "run",
                                *options)
    assert result.returncode in INTERRUPTED, result.stderr  # the tiny run takes longer than that
    _assert_one_line_ending(result, "")


def test_only_a_traceback_of_the_interpreters_own_startup_is_let_through():
    startup = ('Traceback (most recent call last):\n  File "<frozen runpy>", line 189, in _run_module_as_main\n'
               '  File "<frozen runpy>", line 112, in _get_module_details\nKeyboardInterrupt\n')
    ours = startup.replace('  File "<frozen runpy>", line 112', '  File "/x/customkd/cli/app.py", line 3')
    assert _before_the_program(subprocess.CompletedProcess([], 130, "", startup))
    assert not _before_the_program(subprocess.CompletedProcess([], 130, "", ours))
    assert not _before_the_program(subprocess.CompletedProcess([], 0, "", startup))


def test_a_process_that_imports_the_cli_keeps_its_own_handler():
    """Whatever this process's SIGINT handler is (Python's default, or SIG_IGN when a non-interactive shell started
    it in the background), running a command through the CLI leaves it as it was."""
    own = signal.getsignal(signal.SIGINT)
    assert invoke("students").exit_code == 0
    assert invoke("distill", "--cache", "/nonexistent/store.zarr").exit_code == 2  # a failed command too
    assert signal.getsignal(signal.SIGINT) is own


def test_the_resume_hint_names_the_program_as_it_runs_from_here(tmp_path, monkeypatch):
    import sys

    from customkd.cli.distill_cmd import invoked_as

    script = tmp_path / "bin" / "customkd"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(script.parent))
    monkeypatch.setattr(sys, "argv", [str(script), "distill"])
    assert invoked_as() == ["customkd"]  # PATH finds this very script
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [".venv/bin/customkd", "distill"])
    assert invoked_as() == [".venv/bin/customkd"]  # not on PATH: its path, as it was typed
    monkeypatch.setattr(sys, "argv", ["/x/customkd/cli/__main__.py", "distill"])
    assert invoked_as() == [sys.executable, "-m", "customkd.cli"]


PENDING_WRITES = """
import asyncio, sys
import typer
from customkd.cli.common import run_or_exit, setup_logging

setup_logging()
held = []

def action():  # a write pending on an event loop, as zarr's are when Ctrl-C lands in the middle of one
    loop = asyncio.new_event_loop()
    held.append(loop.create_task(asyncio.sleep(3600)))
    loop.run_until_complete(asyncio.sleep(0))
    raise KeyboardInterrupt

try:
    run_or_exit(action)
except typer.Exit as done:
    sys.exit(done.exit_code)
"""


def test_the_interrupted_line_is_the_last_even_with_writes_pending_on_an_event_loop():
    """Ctrl-C while zarr writes (``cache import``, ``extract``): the ``interrupted`` line is the last, with no
    asyncio ``Task was destroyed but it is pending!`` line for a write left on zarr's event loop and no logging
    ``--- Logging error ---`` traceback from a record formatted while Python shuts down."""
    ended = subprocess.run([sys.executable, "-c", PENDING_WRITES], cwd=ROOT, env=cli_env(), capture_output=True,
                           text=True, timeout=120)
    assert ended.returncode == 130, ended.stderr
    assert ended.stderr.strip().splitlines() == ["interrupted; rerun the same command to resume"], ended.stderr
