"""No SAS signature reaches a manifest, a ledger row or a log line, whatever text Batch or the SDKs hand over."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from shared.collect import MAX_REACTIVATIONS, collect
from shared.models import CompletionEvent
from shared.redact import install_log_redaction, redact, redact_value
from shared.submit import submit
from tests.unit.fakes import make_world
from tests.unit.test_collect_reliability import MANIFEST

SAS_URL = "http://127.0.0.1:10000/devstoreaccount1/input/a.txt?sv=2025-01-05&se=2099-01-01&sp=r&sig=S3cr3t%2Bsig%3D"
# What urllib3 says when it gives up on a connection: the request URL, query and all.
CONNECTION_ERROR = (
    "HTTPConnectionPool(host='127.0.0.1', port=10000): Max retries exceeded with url: "
    "/devstoreaccount1/input/a.txt?sv=2025-01-05&sig=S3cr3t%2Bsig%3D (Caused by NewConnectionError)"
)


def test_redact_replaces_signatures_and_keys_and_keeps_the_rest() -> None:
    assert redact(SAS_URL).endswith("&sp=r&sig=REDACTED")
    assert "S3cr3t" not in redact(CONNECTION_ERROR) and "Max retries exceeded" in redact(CONNECTION_ERROR)
    connection_string = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=abc+/def==;BlobEndpoint=x"
    assert redact(connection_string) == "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=REDACTED;BlobEndpoint=x"
    assert redact("skoid=1234&sktid=abcd&sig=zz") == "skoid=REDACTED&sktid=REDACTED&sig=REDACTED"
    assert redact_value({"a": [SAS_URL], "b": 3}) == {"a": [redact(SAS_URL)], "b": 3}


def test_a_failure_message_with_a_sas_url_is_published_without_it(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.batch.fail(outcome.job_id, outcome.task_id, None, "servererror", "BlobDownloadMiscError")
    failure = world.batch.jobs[outcome.job_id].tasks[outcome.task_id].failure
    assert failure is not None
    failure["message"] = CONNECTION_ERROR
    failure["details"] = {"Source": SAS_URL, "Message": CONNECTION_ERROR}
    world.ledger.input_rows[outcome.task_id].reactivations = MAX_REACTIVATIONS  # publish, do not rerun

    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    manifest = world.blobs.text("results", MANIFEST)
    assert json.loads(manifest)["status"] == "failed"
    assert "sig=" in manifest and "S3cr3t" not in manifest


def test_log_records_are_redacted_message_arguments_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    logger = logging.getLogger("shared.test_redaction")
    with caplog.at_level(logging.INFO):
        logger.info("download failed: %s", CONNECTION_ERROR)
        try:
            raise OSError(f"cannot read {SAS_URL}")
        except OSError:
            logger.exception("task failed")
    text = "\n".join(caplog.messages) + caplog.text
    assert "Max retries exceeded" in text and "cannot read" in text
    assert "S3cr3t" not in text
