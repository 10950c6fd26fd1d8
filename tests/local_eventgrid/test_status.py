"""Event Grid's dead letters in the status document (`/api/status`) and in `batchdrop status`."""

from __future__ import annotations

from pathlib import Path

from local import cli
from local.cli.status import render_events
from shared.status import EVENT_DEAD_LETTER_CAP, EVENT_DEAD_LETTER_CONTAINER, status
from tests.unit.fakes import make_world


def test_status_counts_dead_letter_blobs_per_subscription(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    assert status(world.gw)["event_dead_letters"] == {
        "container": EVENT_DEAD_LETTER_CONTAINER, "blobs": 0, "capped": False, "by_subscription": {}, "newest": [],
    }  # fmt: skip
    world.blobs.put(EVENT_DEAD_LETTER_CONTAINER, "ACCOUNT/BATCHDROP-INPUT/2026/12/1/3/a.json")
    world.clock.advance(seconds=1)
    world.blobs.put(EVENT_DEAD_LETTER_CONTAINER, "ACCOUNT/BATCHDROP-TASK-FINISHED/2026/12/1/3/b.json")
    section = status(world.gw)["event_dead_letters"]
    assert section == {
        "container": EVENT_DEAD_LETTER_CONTAINER,
        "blobs": 2,
        "capped": False,
        "by_subscription": {"BATCHDROP-INPUT": 1, "BATCHDROP-TASK-FINISHED": 1},
        "newest": ["ACCOUNT/BATCHDROP-TASK-FINISHED/2026/12/1/3/b.json", "ACCOUNT/BATCHDROP-INPUT/2026/12/1/3/a.json"],
    }


def test_the_listing_is_capped(tmp_path: Path) -> None:
    world = make_world(tmp_path)
    for index in range(EVENT_DEAD_LETTER_CAP + 5):
        world.blobs.put(EVENT_DEAD_LETTER_CONTAINER, f"ACCOUNT/SUB/2026/12/1/3/{index:04}.json")
    section = status(world.gw)["event_dead_letters"]
    assert section["blobs"] == EVENT_DEAD_LETTER_CAP and section["capped"] is True  # type: ignore[index]


def test_batchdrop_status_shows_dead_letters_and_inactive_subscriptions() -> None:
    document = {"event_dead_letters": {"container": EVENT_DEAD_LETTER_CONTAINER, "blobs": 3, "capped": False,
                                       "by_subscription": {"BATCHDROP-INPUT": 3}, "newest": ["A/B/2026/1/1/1/x.json"]}}
    subscriptions = [
        {"name": "batchdrop-input", "provisioningState": "Succeeded", "pending": 2, "delivered": 7,
         "dead_lettered": 3, "reason": "validated"},
        {"name": "batchdrop-task-finished", "provisioningState": "Failed", "pending": 0, "delivered": 0,
         "dead_lettered": 0, "reason": "webhook validation failed: HTTP 404"},
    ]  # fmt: skip
    text = "\n".join(render_events(document, subscriptions))
    assert "event dead letters: 3 blob(s) (BATCHDROP-INPUT 3) in container eventgrid-deadletter" in text
    assert "A/B/2026/1/1/1/x.json" in text
    assert "event subscription batchdrop-input: Succeeded, 2 pending, 7 delivered, 3 dead-lettered" in text
    assert "batchdrop-task-finished: Failed" in text and "webhook validation failed: HTTP 404" in text
    assert render_events({}, None) == ["event dead letters: 0 blob(s) in container eventgrid-deadletter"]
    assert cli.render_status({})[0] == "pipelines: none"
