"""Bulk ingestion over the fakes: a whole Event Grid delivery, one add-collection per job per 100 new inputs."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from shared import bulk_ingest, ids
from shared.bulk_ingest import BadDelivery, ParsedEvent, ingest_delivery, parse_delivery, validation_code
from shared.errors import RejectedInput, TransientError
from shared.models import InputRecord, InputState
from shared.submit import submit_blob, sweep
from tests.unit.fakes import PIPELINE, START, World, make_world

TOPIC = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/{}"


def event(name: str, event_id: str = "", account: str = "devstoreaccount1", container: str = "input",
          event_type: str = "Microsoft.Storage.BlobCreated", etag: str | None = None,
          event_time: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    """A BlobCreated event in the Event Grid schema, for Azurite's path-style URLs (the world's account); with
    data.eTag and eventTime as Event Grid sends them when `etag` is given (else a lookup is what tells the version)."""
    data: dict[str, object] = {"url": f"http://127.0.0.1:10000/{account}/{container}/{quote(name)}", "api": "PutBlob"}
    document: dict[str, Any] = {
        "id": event_id or f"evt-{name}",
        "eventType": event_type,
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "topic": TOPIC.format(account),
        "data": data,
    }
    if etag is not None:
        data.update(eTag=etag, contentLength=1)
        document["eventTime"] = (event_time or START).isoformat().replace("+00:00", "Z")
    return document


def as_uploaded(world: World, name: str, event_id: str = "") -> dict[str, Any]:
    """The event Event Grid raises for the blob `name` as it is in the world now: its etag and creation time."""
    _, etag, created_on = world.blobs.containers["input"][name]
    return event(name, event_id, etag=etag, event_time=created_on)


def deliver(world: World, events: list[dict[str, Any]]) -> dict[str, int]:
    return ingest_delivery(world.gw, parse_delivery(json.dumps(events).encode())).as_dict()


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def test_a_batch_of_100_becomes_one_add_collection(world: World) -> None:
    names = [f"f{index:03}.txt" for index in range(100)]
    for name in names:
        world.blobs.put("input", name)
    report = deliver(world, [event(name) for name in names])
    assert report["submitted"] == 100
    assert world.batch.requests["Task_AddCollection"] == 1 and world.batch.requests["Task_Add"] == 0
    assert len(world.batch.all_tasks()) == 100
    assert {record.state for record in world.ledger.inputs()} == {InputState.SUBMITTED}


def test_each_job_gets_its_own_chunks_of_at_most_100(world: World) -> None:
    first = [f"a{index:03}.txt" for index in range(150)]
    for name in first:
        world.blobs.put("input", name)
    world.clock.advance(minutes=world.gw.settings.job_window_minutes)  # the next uploads fall in the next job
    second = [f"b{index:03}.txt" for index in range(100)]
    for name in second:
        world.blobs.put("input", name)
    events = [event(name) for name in first + second]
    random.Random(3).shuffle(events)  # noqa: S311  (a fixed order to repeat)
    report = deliver(world, events)
    assert report["submitted"] == 250
    jobs = {job_id for job_id, _ in world.batch.all_tasks()}
    assert len(jobs) == 2
    assert sorted(len(world.batch.jobs[job_id].tasks) for job_id in jobs) == [100, 150]
    assert world.batch.requests["Task_AddCollection"] == 3  # 100 + 50 for one job, 100 for the other


def test_the_same_batch_twice_and_shuffled_adds_nothing_and_asks_batch_nothing(world: World) -> None:
    names = [f"f{index:03}.txt" for index in range(120)]
    for name in names:
        world.blobs.put("input", name)
    events = [event(name) for name in names] * 2  # repeated inside one delivery too
    random.Random(5).shuffle(events)  # noqa: S311  (a fixed order to repeat)
    first = deliver(world, events)
    assert (first["submitted"], first["repeated"]) == (120, 120)
    requests = sum(world.batch.requests.values())
    random.Random(6).shuffle(events)  # noqa: S311  (a fixed order to repeat)
    again = deliver(world, events)
    assert (again["submitted"], again["duplicate"]) == (0, 120)
    assert sum(world.batch.requests.values()) == requests  # already submitted: no Batch request at all
    assert len(world.batch.all_tasks()) == 120


def test_an_input_already_collected_costs_no_batch_request(world: World) -> None:
    world.blobs.put("input", "a.txt")
    outcome = submit_blob(world.gw, "input", "a.txt")
    stored = world.ledger.get_input(outcome.task_id)
    assert stored is not None
    stored.state = InputState.COLLECTED
    world.ledger.save_input(stored)
    before = sum(world.batch.requests.values())
    assert deliver(world, [event("a.txt")])["duplicate"] == 1
    assert sum(world.batch.requests.values()) == before


def test_foreign_missing_and_badly_named_inputs_are_refused_and_recorded(world: World) -> None:
    world.blobs.put("input", "ok.txt")
    world.blobs.put("input", "trailing.")
    world.blobs.put("other", "x.txt")
    world.blobs.put("input", "theirs.txt")  # a blob of that name is ours: the event still names their account
    report = deliver(world, [
        as_uploaded(world, "ok.txt"),
        event("theirs.txt", "evt-foreign", account="elsewhere", etag="0x1"),
        event("x.txt", "evt-container", container="other", etag="0x2"),
        event("ghost.txt", "evt-ghost"),  # no eTag: looked up, and there is no such blob
        as_uploaded(world, "trailing.", "evt-name"),
        event("gone.txt", "evt-deleted", event_type="Microsoft.Storage.BlobDeleted", etag="0x3"),
    ])  # fmt: skip
    assert (report["submitted"], report["rejected"], report["ignored"]) == (1, 4, 1)
    assert len(world.batch.all_tasks()) == 1
    reasons = {row["input"]: row["reason"] for row in world.ledger.rejections()}
    assert "storage account 'elsewhere'" in reasons["event evt-foreign"]
    assert "not in the input container 'input'" in reasons["event evt-container"]
    assert "input/ghost.txt: no such blob" in reasons["event evt-ghost"]
    assert "ends with '/' or '.'" in reasons["input/trailing."]
    assert not any("gone.txt" in subject for subject in reasons)
    assert world.blobs.property_reads == 1  # the ghost's lookup alone


def test_an_event_with_etag_for_a_blob_gone_before_the_claim_is_submitted_not_refused(world: World) -> None:
    """The event is trusted: its task fails downloading the input, and collect publishes that (test_events.py)."""
    report = deliver(world, [event("ghost.txt", "evt-ghost", etag="0x8DDEAD")])
    assert report["submitted"] == 1 and report["rejected"] == 0
    assert world.ledger.rejections() == []
    (row,) = world.ledger.inputs()
    assert (row.name, row.etag) == ("ghost.txt", "0x8DDEAD")
    assert row.task_id == ids.task_id("input", "ghost.txt", "0x8DDEAD")


def test_events_with_etags_are_claimed_without_reading_a_blob(world: World) -> None:
    names = [f"f{index:03}.txt" for index in range(120)]
    for name in names:
        world.blobs.put("input", name)
    events = [as_uploaded(world, name) for name in names] * 2
    random.Random(8).shuffle(events)  # noqa: S311  (a fixed order to repeat)
    first = deliver(world, events)
    assert (first["submitted"], first["repeated"]) == (120, 120)
    again = deliver(world, events)
    assert (again["submitted"], again["duplicate"]) == (0, 120)
    assert world.blobs.property_reads == 0
    # The sweep derives the same tasks from its listing: nothing is left for it to submit.
    assert sweep(world.gw).submitted == 0
    assert len(world.batch.all_tasks()) == 120


def test_the_event_time_picks_the_job_and_a_quoted_etag_the_same_task(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    window = world.gw.settings.job_window_minutes
    earlier = START - timedelta(minutes=2 * window)
    deliver(world, [event("a.txt", etag=f'"{blob.etag}"', event_time=earlier)])  # quoted, as the local Event Grid
    task = ids.task_id("input", "a.txt", blob.etag)
    assert world.batch.all_tasks() == [(ids.job_id("report", earlier, window), task)]
    assert world.blobs.property_reads == 0


def test_a_cloud_event_gives_its_time_as_time(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    window = world.gw.settings.job_window_minutes
    earlier = START - timedelta(minutes=3 * window)
    cloud_event = {
        "specversion": "1.0", "id": "ce-1", "type": "Microsoft.Storage.BlobCreated", "source": TOPIC.format(
            "devstoreaccount1"), "subject": "/blobServices/default/containers/input/blobs/a.txt",
        "time": earlier.isoformat(),
        "data": {"url": "http://127.0.0.1:10000/devstoreaccount1/input/a.txt", "eTag": blob.etag},
    }  # fmt: skip
    assert ingest_delivery(world.gw, parse_delivery(json.dumps(cloud_event).encode())).submitted == 1
    assert world.blobs.property_reads == 0
    task = ids.task_id("input", "a.txt", blob.etag)
    assert world.batch.all_tasks() == [(ids.job_id("report", earlier, window), task)]


def test_two_uploads_of_one_name_in_a_delivery_are_two_versions(world: World) -> None:
    """Not `repeated`: each version is its own task, as the blob trigger and the sweep see them; collect publishes
    the newest (an older version's task is superseded)."""
    first = world.blobs.put("input", "a.txt", b"v1")
    first_event = as_uploaded(world, "a.txt")
    world.clock.advance(seconds=1)
    second = world.blobs.put("input", "a.txt", b"v2")
    report = deliver(world, [first_event, as_uploaded(world, "a.txt"), as_uploaded(world, "a.txt")])
    assert (report["submitted"], report["repeated"]) == (2, 1)
    assert sorted(row.etag for row in world.ledger.inputs()) == sorted([first.etag, second.etag])


def test_malformed_events_are_refused_alone_and_the_rest_still_runs(world: World) -> None:
    world.blobs.put("input", "a.txt")
    body = json.dumps([event("a.txt"), 7, {"id": "evt-x"}, {"eventType": "Microsoft.Storage.BlobCreated"}]).encode()
    report = ingest_delivery(world.gw, parse_delivery(body)).as_dict()
    assert (report["submitted"], report["rejected"]) == (1, 3)
    reasons = [row["reason"] for row in world.ledger.rejections()]
    assert any("event 1 of the delivery is a JSON int" in reason for reason in reasons)
    assert any("evt-x: no string 'eventType'" in reason for reason in reasons)
    assert any("event 3 of the delivery has no string 'id'" in reason for reason in reasons)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{nope", "the body is not JSON"),
        (b'{"id": "e1", "eventType": "x"}', "the body is a JSON dict; expected an array of events"),
        (b"[]", "the body is an empty array"),
    ],
)
def test_a_body_that_is_not_an_event_array_is_refused_naming_the_problem(body: bytes, problem: str) -> None:
    with pytest.raises(BadDelivery, match=problem):
        parse_delivery(body)


def test_one_cloud_event_in_structured_mode_is_a_batch_of_one(world: World) -> None:
    world.blobs.put("input", "a.txt")
    cloud_event = {
        "specversion": "1.0", "id": "ce-1", "type": "Microsoft.Storage.BlobCreated", "source": TOPIC.format(
            "devstoreaccount1"), "subject": "/blobServices/default/containers/input/blobs/a.txt",
        "data": {"url": "http://127.0.0.1:10000/devstoreaccount1/input/a.txt"},
    }  # fmt: skip
    report = ingest_delivery(world.gw, parse_delivery(json.dumps(cloud_event).encode()))
    assert report.submitted == 1


def test_validation_handshake_gives_the_code() -> None:
    validation = {"id": "v1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                  "data": {"validationCode": "512d38b6"}}  # fmt: skip
    assert validation_code(parse_delivery(json.dumps([validation]).encode())) == "512d38b6"
    assert validation_code(parse_delivery(json.dumps([event("a.txt")]).encode())) is None
    with pytest.raises(BadDelivery, match=r"no data\.validationCode"):
        validation_code([ParsedEvent("v2", "Microsoft.EventGrid.SubscriptionValidationEvent", {"data": {}})])


def test_a_batch_outage_raises_and_the_redelivery_submits_everything(world: World) -> None:
    names = [f"f{index:02}.txt" for index in range(30)]
    for name in names:
        world.blobs.put("input", name)
    world.batch.unavailable_status = 503
    with pytest.raises(TransientError):
        deliver(world, [event(name) for name in names])
    world.batch.unavailable_status = None
    # The fake ledger stamps no claim time, so these claims are stale already: Event Grid's later retry, after
    # CLAIM_FRESH. A redelivery within it is the next test's case.
    assert deliver(world, [event(name) for name in names])["submitted"] == 30
    assert len(world.batch.all_tasks()) == 30


def test_a_claim_held_by_a_live_submitter_is_confirmed_by_the_next_delivery(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_ingest, "CONFIRM_WAITS", (0.0, 0.0))
    blob = world.blobs.put("input", "a.txt")
    world.blobs.put("input", "b.txt")
    task_id = ids.task_id("input", "a.txt", blob.etag)
    job_id = ids.job_id("report", blob.created_on, world.gw.settings.job_window_minutes)
    world.ledger.claim_input(InputRecord(task_id, "input", "a.txt", ids.normalise_etag(blob.etag), "report",
                                         job_id, InputState.CLAIMED, updated_at=world.clock()))  # fmt: skip
    with pytest.raises(TransientError, match="1 of 2 inputs"):
        deliver(world, [event("a.txt"), event("b.txt")])
    assert len(world.batch.all_tasks()) == 1  # b.txt went ahead
    sweep(world.gw)  # the claim's holder finishes it (here the sweep, which takes claims over)
    assert deliver(world, [event("a.txt"), event("b.txt")])["duplicate"] == 2
    assert len(world.batch.all_tasks()) == 2


def test_a_single_event_is_submitted_at_once_with_one_batch_request(world: World) -> None:
    world.blobs.put("input", "warm.txt")
    deliver(world, [event("warm.txt")])  # the job exists from here on
    world.blobs.put("input", "alone.txt")
    before = sum(world.batch.requests.values())
    assert deliver(world, [event("alone.txt")])["submitted"] == 1
    assert sum(world.batch.requests.values()) - before == 1


def test_inputs_no_pipeline_takes_are_skipped(tmp_path: Path) -> None:
    world = make_world(tmp_path, [{**PIPELINE, "match": {"prefix": "images/", "glob": "*.png"}}])
    world.blobs.put("input", "notes.txt")
    assert deliver(world, [event("notes.txt")])["skipped"] == 1
    assert world.batch.all_tasks() == []


def test_rejected_input_is_a_permanent_error() -> None:
    assert issubclass(BadDelivery, RejectedInput)


def test_a_claim_its_holder_submits_meanwhile_is_confirmed_without_a_redelivery(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent delivery of the same event holds the claim for a moment: one re-read confirms it."""
    blob = world.blobs.put("input", "a.txt")
    task_id = ids.task_id("input", "a.txt", blob.etag)
    job_id = ids.job_id("report", blob.created_on, world.gw.settings.job_window_minutes)
    world.ledger.claim_input(InputRecord(task_id, "input", "a.txt", ids.normalise_etag(blob.etag), "report",
                                         job_id, InputState.CLAIMED, updated_at=world.clock()))  # fmt: skip
    monkeypatch.setattr(bulk_ingest, "_pause", lambda _: sweep(world.gw))  # the holder finishes meanwhile
    report = deliver(world, [event("a.txt")])
    assert (report["duplicate"], report["in_progress"], report["submitted"]) == (1, 0, 0)
    assert len(world.batch.all_tasks()) == 1
