"""SharedKey authentication and Batch's error shapes, through the real SDK."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from azure.batch import models as m
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineRequest
from azure.core.rest import HttpRequest

from local.stack import Emulator
from tests.emulator.conftest import client_for

API_VERSION = "2025-06-01"


def _tamper_after_signing(request: PipelineRequest) -> None:  # type: ignore[type-arg]
    """The custom hook runs after the SharedKey policy: change what was signed."""
    request.http_request.url += "&maxresults=1"


def test_wrong_key_is_refused_with_authentication_failed(emulator: Emulator) -> None:
    wrong = Emulator(**{**emulator.__dict__, "account_key": "d3Jvbmcga2V5IGZvciB0aGUgZW11bGF0b3I="})
    client = client_for(wrong)
    with pytest.raises(ClientAuthenticationError) as raised:
        client.get_job("anything")
    assert raised.value.status_code == 401
    assert raised.value.error is not None and raised.value.error.code == "AuthenticationFailed"


def test_tampered_request_is_refused(emulator: Emulator) -> None:
    client = client_for(emulator, raw_request_hook=_tamper_after_signing)
    with pytest.raises(ClientAuthenticationError) as raised:
        list(client.list_jobs())
    assert raised.value.error is not None and raised.value.error.code == "AuthenticationFailed"


def test_unsigned_request_gets_401_with_a_batch_error_body(emulator: Emulator) -> None:
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{emulator.url}/jobs?api-version={API_VERSION}", timeout=10)
    assert raised.value.code == 401
    body = json.loads(raised.value.read())
    assert body["code"] == "AuthenticationFailed"
    assert body["message"]["lang"] == "en-US" and body["message"]["value"]
    assert "odata.metadata" in body
    assert {"key": "AuthenticationErrorDetail", "value": body["values"][0]["value"]} == body["values"][0]


def test_unknown_operation_answers_501_naming_it(emulator: Emulator) -> None:
    client = client_for(emulator)
    with pytest.raises(HttpResponseError) as raised:
        client.send_request(HttpRequest("GET", f"{emulator.url}/certificates?api-version={API_VERSION}"))
    assert raised.value.status_code == 501
    assert raised.value.error is not None and raised.value.error.code == "NotImplemented"
    assert "GET /certificates" in str(raised.value.error.message)


def test_missing_resources_have_batch_error_codes(emulator: Emulator) -> None:
    client = client_for(emulator)
    cases = [
        (lambda: client.get_job("no-such-job"), "JobNotFound"),
        (lambda: client.get_pool("no-such-pool"), "PoolNotFound"),
        (lambda: client.get_task("no-such-job", "t"), "JobNotFound"),
    ]
    for call, code in cases:
        with pytest.raises(ResourceNotFoundError) as raised:
            call()
        assert raised.value.error is not None and raised.value.error.code == code
        assert raised.value.status_code == 404


def test_invalid_body_is_400_with_property_details(emulator: Emulator) -> None:
    client = client_for(emulator)
    with pytest.raises(HttpResponseError) as raised:
        client.create_job(m.BatchJobCreateOptions(id="has spaces", pool_info=m.BatchPoolInfo(pool_id="p")))
    error = raised.value.error
    assert raised.value.status_code == 400
    assert error is not None and error.code == "InvalidPropertyValue"
    assert any(detail.code == "PropertyName" and detail.message == "id" for detail in error.details)


def test_missing_api_version_is_400(emulator: Emulator) -> None:
    client = client_for(emulator)
    with pytest.raises(HttpResponseError) as raised:
        client.send_request(HttpRequest("GET", f"{emulator.url}/jobs"))
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == "MissingRequiredQueryParameter"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "InvalidRequestBody"),
        (b"[1, 2]", "InvalidRequestBody"),
        (b'{"id": "j", "poolInfo": {"poolId": "p"}, "constraints": "PT1H"}', "InvalidPropertyValue"),
        (b'{"id": "j", "poolInfo": {"poolId": "p"}, "priority": "high"}', "InvalidPropertyValue"),
        (b'{"id": "j", "poolInfo": "p"}', "InvalidPropertyValue"),
        (b'{"id": 7, "poolInfo": {"poolId": "p"}}', "InvalidPropertyValue"),
    ],
)
def test_malformed_bodies_are_400_never_500(emulator: Emulator, body: bytes, code: str) -> None:
    client = client_for(emulator)
    request = HttpRequest(
        "POST",
        f"{emulator.url}/jobs?api-version={API_VERSION}",
        content=body,
        headers={"Content-Type": "application/json; odata=minimalmetadata"},
    )
    with pytest.raises(HttpResponseError) as raised:
        client.send_request(request)
    assert raised.value.status_code == 400
    assert raised.value.error is not None and raised.value.error.code == code


def test_a_request_older_than_15_minutes_is_refused(emulator: Emulator) -> None:
    from datetime import UTC, datetime, timedelta

    client = client_for(emulator)
    with pytest.raises(ClientAuthenticationError) as raised:
        client.get_job("anything", ocp_date=datetime.now(UTC) - timedelta(minutes=20))
    assert raised.value.error is not None and raised.value.error.code == "AuthenticationFailed"
    with pytest.raises(ResourceNotFoundError):
        client.get_job("anything", ocp_date=datetime.now(UTC) - timedelta(minutes=5))


def test_optional_query_parameters_are_signed_and_accepted(emulator: Emulator) -> None:
    client = client_for(emulator)
    with pytest.raises(ResourceNotFoundError):
        client.get_job("anything", service_timeout=10)  # sent as ?timeOut=10, part of the signature
    assert list(client.list_jobs(service_timeout=10, max_results=5, filter="startswith(id,'zz-none')")) == []


def test_a_chunked_request_body_is_read(emulator: Emulator) -> None:
    from collections.abc import Iterator

    def body() -> Iterator[bytes]:
        yield b'{"id": "chunked-job", '
        yield b'"poolInfo": {"poolId": "p"}}'

    client = client_for(emulator)
    request = HttpRequest(
        "POST",
        f"{emulator.url}/jobs?api-version={API_VERSION}",
        content=body(),
        headers={"Content-Type": "application/json; odata=minimalmetadata"},
    )
    response = client.send_request(request)
    assert response.status_code == 201
    assert client.get_job("chunked-job").pool_info.pool_id == "p"


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        ("get_pool", "PoolNotFound"),
        ("resize_pool", "PoolNotFound"),
        ("delete_pool", "PoolNotFound"),
        ("list_nodes", "PoolNotFound"),
        ("get_node", "NodeNotFound"),
        ("get_job", "JobNotFound"),
        ("update_job", "JobNotFound"),
        ("delete_job", "JobNotFound"),
        ("terminate_job", "JobNotFound"),
        ("task_counts", "JobNotFound"),
        ("list_tasks", "JobNotFound"),
        ("get_task", "TaskNotFound"),
        ("terminate_task", "TaskNotFound"),
        ("reactivate_task", "TaskNotFound"),
        ("delete_task", "TaskNotFound"),
        ("list_task_files", "TaskNotFound"),
    ],
)
def test_every_operation_on_a_missing_resource_is_404_with_its_code(
    batch: object, job_id: str, pool_id: str, operation: str, code: str
) -> None:
    from azure.batch import BatchClient

    client: BatchClient = batch  # type: ignore[assignment]
    calls = {
        "get_pool": lambda: client.get_pool("missing-pool"),
        "resize_pool": lambda: client.begin_resize_pool(
            "missing-pool", m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0
        ),
        "delete_pool": lambda: client.begin_delete_pool("missing-pool", polling_interval=0),
        "list_nodes": lambda: list(client.list_nodes("missing-pool")),
        "get_node": lambda: client.get_node(pool_id, "missing-node"),
        "get_job": lambda: client.get_job("missing-job"),
        "update_job": lambda: client.update_job("missing-job", m.BatchJobUpdateOptions(priority=1)),
        "delete_job": lambda: client.begin_delete_job("missing-job", polling_interval=0),
        "terminate_job": lambda: client.begin_terminate_job("missing-job", {"terminateReason": "x"}),
        "task_counts": lambda: client.get_job_task_counts("missing-job"),
        "list_tasks": lambda: list(client.list_tasks("missing-job")),
        "get_task": lambda: client.get_task(job_id, "missing-task"),
        "terminate_task": lambda: client.terminate_task(job_id, "missing-task"),
        "reactivate_task": lambda: client.reactivate_task(job_id, "missing-task"),
        "delete_task": lambda: client.delete_task(job_id, "missing-task"),
        "list_task_files": lambda: list(client.list_task_files(job_id, "missing-task")),
    }
    with pytest.raises(ResourceNotFoundError) as raised:
        calls[operation]()
    assert raised.value.status_code == 404
    assert raised.value.error is not None and raised.value.error.code == code
    assert raised.value.error.message  # Batch's message.value
