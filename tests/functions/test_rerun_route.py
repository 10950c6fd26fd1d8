"""POST /api/rerun called with real azure.functions request objects, over in-memory fakes."""

import json
from pathlib import Path

import azure.functions as func
import pytest

from shared.triggers import boundary, rerun
from shared.triggers import timers as timer_triggers
from tests.functions.test_blueprints import user_function
from tests.unit.fakes import World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    world = make_world(tmp_path)
    monkeypatch.setattr(boundary, "gateways", lambda: world.gw)
    return world


def post(body: bytes) -> func.HttpResponse:
    request = func.HttpRequest(method="POST", url="http://127.0.0.1/api/rerun", body=body)
    response: func.HttpResponse = user_function(rerun.bp, "rerun")(request)
    return response


def test_a_rerun_request_twice_answers_submitted_then_duplicate(world: World) -> None:
    from azure.functions.timer import TimerRequest

    world.blobs.put("input", "a.txt")
    user_function(timer_triggers.bp, "sweep")(TimerRequest(past_due=False))
    [(job_id, task_id)] = world.batch.all_tasks()
    world.batch.finish(job_id, task_id, 3)
    body = json.dumps({"id": "req-1", "names": ["a.txt", "gone.txt"]}).encode()
    first = json.loads(post(body).get_body())
    assert (first["submitted"], first["refused"]) == (1, 1)
    reasons = {outcome["name"]: outcome["reason"] for outcome in first["outcomes"]}
    assert reasons == {"a.txt": "", "gone.txt": "the input no longer exists"}
    again = json.loads(post(body).get_body())
    assert (again["submitted"], again["duplicate"]) == (0, 1)
    assert len(world.batch.all_tasks()) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{not json", "not JSON"), (b'{"names": ["a"]}', "`id`"), (b'{"id": "r", "pipeline": "nope", "all": true}', "")],
)
def test_a_bad_request_is_400_and_recorded(world: World, body: bytes, message: str) -> None:
    response = post(body)
    assert response.status_code == 400
    assert message in json.loads(response.get_body())["error"]
    assert world.ledger.rejections(), "the refusal is recorded where status shows it"
