"""`batchdrop` end to end as a user types it: a real stack (Azurite, the emulator, the dev host) per test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from local.stack import AZURITE_KEY
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.e2e
PROJECT = Path(__file__).resolve().parents[2]
SAMPLES = PROJECT / "samples"


def batchdrop(state: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHDROP_STATE_DIR": str(state)}
    result = subprocess.run(
        [sys.executable, "-m", "local.cli", *args],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    # No command ever shows a key or a connection string.
    for secret in (AZURITE_KEY, "AccountKey", "sig="):
        assert secret not in result.stdout + result.stderr
    return result


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def running_stack(state: Path):  # type: ignore[no-untyped-def]
    started = batchdrop(state, "up", "--detach", "--random-ports", timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield state
    finally:
        stopped = batchdrop(state, "down", timeout=60)
        assert stopped.returncode == 0, stopped.stderr


def wait_for_rows(state: Path, count: int, timeout: float = 90) -> list[list[str]]:
    def enough() -> list[list[str]] | NotYet:
        listed = batchdrop(state, "results")
        assert listed.returncode == 0, listed.stderr
        rows = [line.split() for line in listed.stdout.splitlines()[1:] if line.strip()]
        return rows if len(rows) >= count else NotYet(rows)

    return wait_until(enough, timeout, interval=1, what=f"{count} result rows")


def test_up_drop_results_status_down(running_stack: Path, tmp_path: Path) -> None:
    state = running_stack
    hostile = "odd name; $(touch pwned) `x` 'q'.txt"

    dropped = batchdrop(state, "drop", str(SAMPLES / "hello.txt"), str(SAMPLES / "fail-on-purpose.txt"))
    dropped_as = batchdrop(state, "drop", str(SAMPLES / "cities.csv"), "--as", hostile)

    assert dropped.returncode == 0 and dropped_as.returncode == 0, dropped.stderr + dropped_as.stderr
    assert f"as input/{hostile}" in dropped_as.stdout
    rows = wait_for_rows(state, 3)
    listed = batchdrop(state, "results").stdout
    assert ["hello.txt", "succeeded", "0", "preview.txt,", "report.json"] in rows
    assert ["fail-on-purpose.txt", "failed", "3", "-"] in rows
    assert any(line.startswith(hostile) and " succeeded " in line for line in listed.splitlines())
    assert not (PROJECT / "pwned").exists()

    status = batchdrop(state, "status")
    assert status.returncode == 0, status.stderr
    total = next(line for line in status.stdout.splitlines() if line.startswith("TOTAL")).split()
    assert total[-1] == "3"  # collected

    download = tmp_path / "download"
    fetched = batchdrop(state, "results", "--download", str(download))
    assert fetched.returncode == 0, fetched.stderr
    assert (download / "hello.txt" / "report.json").is_file()
    assert (download / hostile / "preview.txt").read_text().startswith("city,country")
    assert "fails on purpose" in (download / "fail-on-purpose.txt" / "_logs" / "stderr.txt").read_text()


def test_package_add_reaches_the_running_emulator(running_stack: Path, tmp_path: Path) -> None:
    from azure.batch import BatchClient
    from azure.batch import models as m
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import ResourceExistsError

    from apps.csvstats.build import build
    from local.batch.account import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME

    package = build(tmp_path / "csvstats.zip")
    added = batchdrop(running_stack, "package", "add", "csvstats", "1.0", str(package), "--default")
    assert added.returncode == 0, added.stderr
    listed = batchdrop(running_stack, "package", "list", "--json")
    assert json.loads(listed.stdout)[0]["defaultVersion"] == "1.0"

    emulator_url = json.loads((running_stack / "stack.json").read_text())["emulator_url"]
    client = BatchClient(emulator_url, AzureNamedKeyCredential(DEV_ACCOUNT_NAME, DEV_ACCOUNT_KEY))
    image = m.BatchVmImageReference(publisher="canonical", offer="ubuntu-24_04-lts", sku="server", version="latest")
    vm = m.VirtualMachineConfiguration(image_reference=image, node_agent_sku_id="batch.node.ubuntu 24.04")

    def pool(pool_id: str, application_id: str) -> m.BatchPoolCreateOptions:
        reference = m.BatchApplicationPackageReference(application_id=application_id)
        return m.BatchPoolCreateOptions(
            id=pool_id, vm_size="standard_d2s_v3", virtual_machine_configuration=vm,
            target_dedicated_nodes=0, application_package_references=[reference],
        )  # fmt: skip

    client.create_pool(pool("with-package", "csvstats"))  # the default version the CLI set
    with pytest.raises(ResourceExistsError) as raised:
        client.create_pool(pool("without-package", "notadded"))
    assert raised.value.error is not None and raised.value.error.code == "InvalidApplicationPackageReferences"


def test_a_second_up_is_refused_while_one_runs(running_stack: Path) -> None:
    again = batchdrop(running_stack, "up", "--detach", "--random-ports")

    assert again.returncode == 1
    assert "already running" in again.stderr


def test_down_stops_every_process(state: Path) -> None:
    started = batchdrop(state, "up", "--detach", "--random-ports", timeout=200)
    assert started.returncode == 0, started.stderr
    # "(pid N" appears once for the background process and once per server (Azurite, the emulator, the local
    # Event Grid, the dev host).
    pids = [int(part.split()[0].rstrip(");")) for part in started.stdout.split("(pid ")[1:]]
    assert len(pids) == 5

    assert batchdrop(state, "down").returncode == 0

    assert [pid for pid in pids if running(pid)] == []


def running(pid: int) -> bool:
    """Alive and not a zombie (a reparented process may wait for a pid 1 that never reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_demo_passes_and_leaves_nothing_running(state: Path) -> None:
    demo = batchdrop(state, "demo", timeout=300)

    assert demo.returncode == 0, demo.stdout + demo.stderr
    # 4 top-level samples, the 2 under samples/csv, and one for the group of the 2 under samples/pairs
    assert "demo passed: 7 manifests" in demo.stdout
    group = json.loads((state / "demo" / "results" / "pairs" / "sample1" / "_manifest.json").read_text())
    assert group["pipeline"] == "pairs" and group["status"] == "succeeded" and group["group"] == "pairs/sample1"
    assert [member["name"] for member in group["members"]] == ["pairs/sample1_R1.txt", "pairs/sample1_R2.txt"]
    assert "application packages added to the Batch account: csvstats 1.0" in demo.stdout
    manifest = json.loads((state / "demo" / "results" / "csv" / "weather.csv" / "_manifest.json").read_text())
    assert manifest["pipeline"] == "csvstats" and manifest["status"] == "succeeded"
    stats = json.loads((state / "demo" / "results" / "csv" / "weather.csv" / "stats.json").read_text())
    assert stats["rows"] > 0  # computed by the package's tool with its vendored dependency
    assert "stopped the local stack." in demo.stdout
    assert not (state / "demo" / "stack.json").exists()


def processes_under(directory: Path) -> list[int]:
    """Pids of live processes whose command line mentions `directory` (every server gets its state dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(directory) in cmdline and running(int(entry.name)):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="lists processes through /proc")
@pytest.mark.parametrize("delay", [0.3, 1.0, 3.0])
def test_ctrl_c_during_the_demo_stops_everything_it_started(state: Path, delay: float) -> None:
    env = {**os.environ, "BATCHDROP_STATE_DIR": str(state)}
    demo = subprocess.Popen(
        [sys.executable, "-m", "local.cli", "demo"], cwd=PROJECT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert demo.stdout is not None
    first_line = demo.stdout.readline()  # printed once the servers start: Ctrl-C lands while they do, or later
    assert "starting" in first_line
    time.sleep(delay)
    demo.send_signal(signal.SIGINT)
    output, _ = demo.communicate(timeout=60)

    assert demo.returncode in (0, 130), output
    assert processes_under(state) == []
