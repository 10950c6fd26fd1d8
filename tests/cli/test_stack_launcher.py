"""local/stack.py's launcher: a server that never says it is ready is stopped when its start-up time is up."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import psutil
import pytest

from local.stack import StackError, start_server


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# Without a timed wait the launcher reads stdout until the child exits (60 s): pytest-timeout ends that.
@pytest.mark.timeout(20)
def test_a_server_that_never_prints_ready_is_stopped_after_its_timeout(tmp_path: Path) -> None:
    silent = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(60)"]
    log_path = tmp_path / "logs" / "silent.log"
    started = time.monotonic()

    with pytest.raises(StackError, match="did not print READY") as raised:
        start_server("silent", silent, log_path, ready_timeout=1.5)

    assert time.monotonic() - started < 10  # 1.5 s to wait, then SIGTERM: it dies at once
    pid = raised.value.pid
    assert pid is not None
    try:
        assert gone(pid)
        assert f"pid {pid}" in str(raised.value) and "no READY line after 1.5 s" in str(raised.value)
        assert "starting" in log_path.read_text()  # what it printed before hanging is in its log
    finally:
        if not gone(pid):
            psutil.Process(pid).kill()


def test_a_server_that_exits_before_ready_is_reported_with_its_exit_code(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; sys.exit('no config')"]

    with pytest.raises(StackError, match="exited with code 1") as raised:
        start_server("failing", failing, tmp_path / "failing.log", ready_timeout=30)

    assert "no config" in str(raised.value)  # stderr goes to the log, whose tail the error shows


def test_a_server_that_prints_ready_is_returned_running(tmp_path: Path) -> None:
    ready = [sys.executable, "-c", "import time; print('READY http://127.0.0.1:1', flush=True); time.sleep(60)"]

    server = start_server("ready", ready, tmp_path / "ready.log", ready_timeout=30)
    try:
        assert server.url == "http://127.0.0.1:1"
        assert server.alive()
    finally:
        server.stop()
    assert gone(server.pid)
