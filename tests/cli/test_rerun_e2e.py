"""`batchdrop rerun`, `logs`, `status --json/--watch` and `results --json` as a user types them, on a real stack:
the CLI posts to the dev host's /api/rerun, which runs the Functions app over Azurite and the Batch emulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient

from local.cli.state import StackInfo
from tests.cli.test_cli_e2e import SAMPLES, batchdrop
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.e2e
FIXED_APP = b"""\
import os, sys
source, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "report.json"), "w").write('{"fixed": true}')
print("the fixed app read", os.path.basename(source))
"""


@pytest.fixture
def stack(tmp_path: Path):  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    started = batchdrop(state, "up", "--detach", "--random-ports", timeout=200)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield state
    finally:
        stopped = batchdrop(state, "down", timeout=60)
        assert stopped.returncode == 0, stopped.stderr


def results_json(state: Path) -> dict[str, dict[str, Any]]:
    listed = batchdrop(state, "results", "--json")
    assert listed.returncode == 0, listed.stderr
    return {str(manifest["input"]): manifest for manifest in json.loads(listed.stdout)}


def wait_for_run(state: Path, name: str, run: int) -> dict[str, Any]:
    def published() -> dict[str, Any] | NotYet:
        manifest = results_json(state).get(name)
        return manifest if manifest is not None and manifest.get("run") == run else NotYet(manifest)

    return wait_until(published, 120, interval=1, what=f"run {run} of {name}")


def test_a_failed_input_fixed_by_an_app_change_is_rerun_from_the_cli(stack: Path) -> None:
    state = stack
    dropped = batchdrop(state, "drop", str(SAMPLES / "fail-on-purpose.txt"))
    assert dropped.returncode == 0, dropped.stderr
    first = wait_for_run(state, "fail-on-purpose.txt", 1)
    assert first["status"] == "failed"
    logs = batchdrop(state, "logs", "fail-on-purpose.txt")
    assert logs.returncode == 0 and "==> stderr (fail-on-purpose.txt/_logs/stderr.txt) <==" in logs.stdout
    assert "fails on purpose" in logs.stdout

    info = StackInfo.load(state / "stack.json")
    assert info is not None
    with BlobServiceClient.from_connection_string(info.storage_connection_string) as service:
        service.get_container_client("apps").upload_blob("report/report.py", FIXED_APP, overwrite=True)

    rerun = batchdrop(state, "rerun", "--failed", "--id", "fix-1", "--json")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    answer = json.loads(rerun.stdout)
    assert (answer["submitted"], answer["outcomes"][0]["run"]) == (1, 2), answer
    again = batchdrop(state, "rerun", "fail-on-purpose.txt", "--id", "fix-1")  # the same request delivered again
    assert again.returncode == 0 and "0 submitted, 1 already re-run by this request" in again.stdout, again.stdout

    fixed = wait_for_run(state, "fail-on-purpose.txt", 2)
    assert fixed["status"] == "succeeded"
    assert "the fixed app read" in batchdrop(state, "logs", "fail-on-purpose.txt").stdout
    history = batchdrop(state, "logs", "fail-on-purpose.txt", "--run", "1")
    assert "_history/1/_logs/stderr.txt" in history.stdout and "fails on purpose" in history.stdout
    assert list(results_json(state)) == ["fail-on-purpose.txt"]  # the history manifest is not a result

    refused = batchdrop(state, "rerun", "no-such-file.txt")
    assert refused.returncode == 1 and "the input no longer exists" in refused.stdout
    watched = batchdrop(state, "status", "--watch", "--until-idle", "--interval", "0.5", timeout=120)
    assert watched.returncode == 0, watched.stderr
    document = json.loads(batchdrop(state, "status", "--json").stdout)
    assert (document["totals"]["collected"], document["totals"]["failed"]) == (1, 0), document["totals"]
    assert any("no-such-file.txt" in row["input"] for row in document["rejected"])
