"""A node whose storage is unreachable: the failure is Batch's server error, and no SAS leaves the node."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from local.batch import runner

SECRET = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"


@pytest.fixture(autouse=True)
def no_storage_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's storage clients retry an unreachable account for about a minute; here the failure is the point."""
    monkeypatch.setattr(runner, "STORAGE_CLIENT_OPTIONS", {"retry_total": 0})


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sas(path: str) -> str:
    return f"http://127.0.0.1:{closed_port()}/devstoreaccount1/{path}?sv=2025-01-05&se=2099-01-01&sp=r&sig={SECRET}"


def attempt(tmp_path: Path, **kwargs: Any) -> runner.Attempt:
    values: dict[str, Any] = {
        "job_id": "job", "task_id": "task", "pool_id": "pool", "node_id": "node", "node_root": tmp_path,
        "command_line": "true", "environment": {}, "resource_files": [], "output_files": [],
        "wall_clock_seconds": None,
    }  # fmt: skip
    values.update(kwargs)
    return runner.Attempt(**values)


def reported(failure: runner.Failure) -> str:
    return json.dumps(failure.info())


@pytest.mark.parametrize(
    "resource",
    [
        {"httpUrl": sas("input/a.txt"), "filePath": "a.txt"},
        {"storageContainerUrl": sas("input"), "filePath": "in"},
    ],
    ids=["httpUrl", "storageContainerUrl"],
)
def test_an_unreachable_download_is_a_server_error_without_the_sas(tmp_path: Path, resource: dict[str, str]) -> None:
    with pytest.raises(runner.Failure) as failed:
        runner.prepare(attempt(tmp_path, resource_files=[resource]))
    assert (failed.value.category, failed.value.code) == ("servererror", "BlobDownloadMiscError")
    assert SECRET not in reported(failed.value) and "sig=" not in reported(failed.value)


def test_an_unreachable_upload_is_a_server_error_without_the_sas(tmp_path: Path) -> None:
    task = attempt(
        tmp_path,
        output_files=[
            {
                "filePattern": "out/*",
                "destination": {"container": {"containerUrl": sas("staging"), "path": "out"}},
                "uploadOptions": {"uploadCondition": "taskCompletion"},
            }
        ],
    )
    task.working_dir.mkdir(parents=True)
    (task.working_dir / "out").mkdir()
    (task.working_dir / "out" / "report.txt").write_text("done")
    with pytest.raises(runner.Failure) as failed:
        runner.upload_outputs(task, succeeded=True)
    assert (failed.value.category, failed.value.code) == ("servererror", "FileUploadMiscError")
    assert SECRET not in reported(failed.value) and "sig=" not in reported(failed.value)


def test_redact_queries_keeps_the_url_and_drops_its_query() -> None:
    text = f"HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /c/b?sv=1&sig={SECRET} (x)"
    assert runner.redact_queries(text) == (
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: /c/b?REDACTED (x)"
    )
