"""The subscriptions file (its schema, placeholders, clear errors) and the journal, without servers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from local.eventgrid.__main__ import DEFAULT_SUBSCRIPTIONS
from local.eventgrid.journal import Journal, Owed
from local.eventgrid.subscriptions import SubscriptionError, load_subscriptions


def write(tmp_path: Path, *subscriptions: dict[str, Any]) -> Path:
    path = tmp_path / "subscriptions.json"
    path.write_text(json.dumps({"subscriptions": list(subscriptions)}))
    return path


def test_the_stack_file_declares_input_and_task_finished_with_the_app_settings_names(tmp_path: Path) -> None:
    default = {subscription.name: subscription for subscription in load_subscriptions(DEFAULT_SUBSCRIPTIONS, {})}
    assert default["batchdrop-input"].subject_begins_with == "/blobServices/default/containers/input/blobs/"
    assert default["batchdrop-input"].max_events_per_batch == 100
    finished = default["batchdrop-task-finished"]
    assert (finished.subject_begins_with, finished.subject_ends_with) == (
        "/blobServices/default/containers/staging-", "/logs/stderr.txt")
    assert finished.endpoint == "/runtime/webhooks/EventGrid?functionName=task_finished"

    renamed = {s.name: s for s in load_subscriptions(DEFAULT_SUBSCRIPTIONS, {
        "BATCHDROP_INPUT_CONTAINER": "drop", "BATCHDROP_STAGING_PREFIX": "stg"})}  # fmt: skip
    assert renamed["batchdrop-input"].subject_begins_with == "/blobServices/default/containers/drop/blobs/"
    assert renamed["batchdrop-task-finished"].subject_begins_with == "/blobServices/default/containers/stg-"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "a-b", "endpoint": "/x", "max_events_per_batch": 0}, "max_events_per_batch must be an integer"),
        ({"name": "a-b", "endpoint": "/x", "max_delivery_attempts": 31}, "max_delivery_attempts must be an integer"),
        ({"name": "a-b", "endpoint": "/x", "event_ttl_minutes": "60"}, "event_ttl_minutes must be an integer"),
        ({"name": "a-b", "endpoint": "http://elsewhere/x"}, "endpoint must be a path of the function app"),
        ({"name": "a-b", "endpoint": "/x", "subject_begins_with": "/c/{NOPE}/"}, "placeholder {NOPE}"),
        ({"name": "a-b", "endpoint": "/x", "deadletter": "x"}, "unknown field(s) deadletter"),
        ({"name": "a b", "endpoint": "/x"}, "name must be 3-64 letters"),
        ({"name": "a-b", "endpoint": "/x", "included_event_types": "Created"}, "included_event_types must be a list"),
    ],
)  # fmt: skip
def test_a_wrong_subscription_is_refused_naming_it_and_the_field(tmp_path: Path, entry: dict[str, Any],
                                                                 message: str) -> None:  # fmt: skip
    with pytest.raises(SubscriptionError) as refused:
        load_subscriptions(write(tmp_path, entry), {})
    assert message in str(refused.value) and "subscription 0" in str(refused.value)


def test_names_are_unique_and_the_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(SubscriptionError, match="repeated: a-b"):
        load_subscriptions(write(tmp_path, {"name": "a-b", "endpoint": "/x"}, {"name": "A-B", "endpoint": "/y"}), {})
    with pytest.raises(SubscriptionError, match="does not exist"):
        load_subscriptions(tmp_path / "missing.json", {})


def test_filters_compare_subjects_case_insensitively_and_check_the_type(tmp_path: Path) -> None:
    [subscription] = load_subscriptions(write(tmp_path, {
        "name": "logs", "endpoint": "/x", "subject_begins_with": "/blobServices/default/containers/staging-",
        "subject_ends_with": "/logs/stderr.txt"}), {})  # fmt: skip
    created = "Microsoft.Storage.BlobCreated"
    assert subscription.matches({"eventType": created,
                                 "subject": "/blobServices/default/containers/staging-ab12/blobs/LOGS/stderr.TXT"})
    assert not subscription.matches({"eventType": created,
                                     "subject": "/blobServices/default/containers/staging-ab12/blobs/logs/stdout.txt"})
    assert not subscription.matches({"eventType": created,
                                     "subject": "/blobServices/default/containers/input/blobs/logs/stderr.txt"})
    assert not subscription.matches({"eventType": "Microsoft.Storage.BlobDeleted",
                                     "subject": "/blobServices/default/containers/staging-a/blobs/logs/stderr.txt"})


def test_the_journal_gives_back_what_is_still_owed_after_a_crash(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    assert journal.recover() == []
    owed = [Owed("sub", 1.0, {"id": f"e{index}"}) for index in range(3)]
    journal.added(owed)
    journal.done("sub", ["e1"])
    journal.close()
    with (tmp_path / "journal.jsonl").open("a") as torn:
        torn.write('{"add": "sub", "publ')  # the line a crash cut short

    again = Journal(tmp_path / "journal.jsonl")
    assert [entry.event["id"] for entry in again.recover()] == ["e0", "e2"]
    again.done("sub", ["e0", "e2"])
    again.close()
    assert Journal(tmp_path / "journal.jsonl").recover() == []
