"""`batchdrop down` signals a recorded pid only while it is still the process `up` started.

Each test starts its own stand-in process (a sleeping Python) and stops it by its pid afterwards.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from local import cli
from local.cli.lifecycle import refuse_if_running


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(cli.STATE_DIR_SETTING, str(state))
    return state


@pytest.fixture
def stand_in() -> Iterator[subprocess.Popen[bytes]]:
    """A live process whose command line even names the dev host (what a check of /proc looked for)."""
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "-m", "local.host"]
    process = subprocess.Popen(argv, start_new_session=True)
    try:
        # Between fork and exec the child still shows the parent's command line: an identity read then would
        # not be the stand-in's. Wait until the exec has happened.
        deadline = time.monotonic() + 10
        while psutil.Process(process.pid).cmdline()[1:] != argv[1:] and time.monotonic() < deadline:
            time.sleep(0.01)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def record_as_dev_host(pid: int, identity: cli.Identity | None) -> None:
    cli.StackInfo(
        "/w", "cs", "http://h", "http://e", "http://b",
        {"dev-host": cli.ProcessInfo(pid, "http://h", "/w/logs/host.log", identity)},
    ).save(cli.stack_file())  # fmt: skip


def still_running(process: subprocess.Popen[bytes]) -> bool:
    # A signal from `down` takes effect at once; a second is plenty for it to land.
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1)
    return process.poll() is None


@pytest.mark.parametrize("differs", ["create time", "command line"])
def test_down_leaves_a_reused_pid_alone_and_says_why(
    stand_in: subprocess.Popen[bytes], differs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    current = psutil.Process(stand_in.pid)
    if differs == "create time":  # the dev host we started exited an hour ago; its pid went to this process
        recorded = cli.Identity(current.create_time() - 3600, current.cmdline())
    else:
        recorded = cli.Identity(current.create_time(), [sys.executable, "-m", "local.host", "--app", "app:app"])
    record_as_dev_host(stand_in.pid, recorded)

    assert cli.main(["down"]) == 0

    out, err = capsys.readouterr()
    assert still_running(stand_in)
    assert f"not signalling pid {stand_in.pid} (recorded as dev-host)" in err
    assert "another process" in err if differs == "create time" else "another command" in err
    assert "nothing was running" in out
    assert not cli.stack_file().exists()


def test_down_leaves_alone_a_live_pid_it_cannot_identify(
    stand_in: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    record_as_dev_host(stand_in.pid, None)  # a stack file without identities

    assert cli.main(["down"]) == 0

    assert still_running(stand_in)
    assert f"not signalling pid {stand_in.pid} (recorded as dev-host)" in capsys.readouterr().err


def test_up_refuses_while_a_recorded_pid_cannot_be_identified(stand_in: subprocess.Popen[bytes]) -> None:
    record_as_dev_host(stand_in.pid, None)

    with pytest.raises(cli.CliError, match=f"pid {stand_in.pid} \\(dev-host\\)"):
        refuse_if_running()  # what `up` does first


def test_down_stops_a_recorded_process_that_is_still_ours(
    stand_in: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    current = psutil.Process(stand_in.pid)
    record_as_dev_host(stand_in.pid, cli.Identity(current.create_time(), current.cmdline()))

    assert cli.main(["down"]) == 0

    assert not still_running(stand_in)
    assert "stopped the local stack." in capsys.readouterr().out
