"""Event Grid BlobCreated events: the blob they name, the version they are about, and refusal of events about
another storage account."""

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared import ids
from shared.collect import collect
from shared.errors import ConfigError, RejectedInput
from shared.events import MAX_CLOCK_SKEW, BlobCreated, parse_blob_created, storage_account, submit_event
from shared.poll import poll
from shared.submit import sweep
from tests.unit.fakes import World, make_settings, make_world

AZURE_TOPIC = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/{}"
IDENTITY = {
    "BatchdropStorage": None,
    "BatchdropStorage__blobServiceUri": "https://ours.blob.core.windows.net",
    "BatchdropStorage__queueServiceUri": "https://ours.queue.core.windows.net",
    "BatchdropStorage__tableServiceUri": "https://ours.table.core.windows.net",
}


def azure_event(account: str, name: str, topic_account: str | None = None) -> BlobCreated:
    data = {"url": f"https://{account}.blob.core.windows.net/input/{name}", "api": "PutBlob"}
    return parse_blob_created("evt-1", data, "", AZURE_TOPIC.format(topic_account or account))


@pytest.fixture
def azure_world(tmp_path: Path) -> World:
    """Gateways over fakes, configured as on Azure: managed identity, account `ours`."""
    return make_world(tmp_path, **IDENTITY)


def test_azure_url_names_container_blob_and_account() -> None:
    created = azure_event("Ours", "dir/a%20b%20%E2%98%83.txt")
    assert (created.container, created.name, created.accounts) == ("input", "dir/a b ☃.txt", {"ours"})


def test_azurite_path_style_url_names_the_account_in_its_path() -> None:
    data = {"url": "http://127.0.0.1:10000/devstoreaccount1/input/x/y.txt"}
    created = parse_blob_created("evt-1", data, "", "")
    assert (created.container, created.name, created.accounts) == ("input", "x/y.txt", {"devstoreaccount1"})
    in_compose = parse_blob_created("evt-2", {"url": "http://azurite:10000/devstoreaccount1/input/a"}, "", "")
    assert (in_compose.container, in_compose.name, in_compose.accounts) == ("input", "a", {"devstoreaccount1"})


def test_subject_is_the_fallback_for_the_blob_and_topic_for_the_account() -> None:
    subject = "/blobServices/default/containers/input/blobs/a.txt"
    created = parse_blob_created("evt-1", {"url": 7}, subject, AZURE_TOPIC.format("ours"))
    assert (created.container, created.name, created.accounts) == ("input", "a.txt", {"ours"})


def test_event_naming_no_blob_is_rejected_with_the_reason() -> None:
    with pytest.raises(RejectedInput, match=r"neither data\.url nor subject names a blob"):
        parse_blob_created("evt-1", None, None, AZURE_TOPIC.format("ours"))


@pytest.mark.parametrize(
    ("connection", "account"),
    [
        ("UseDevelopmentStorage=true", "devstoreaccount1"),
        (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=k==;"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
            "devstoreaccount1",
        ),
        ("DefaultEndpointsProtocol=https;AccountName=Ours;AccountKey=k==;EndpointSuffix=core.windows.net", "ours"),
        ("BlobEndpoint=https://ours.blob.core.windows.net/;SharedAccessSignature=sv=x&sig=y", "ours"),
    ],
)
def test_our_account_comes_from_the_connection_string(tmp_path: Path, connection: str, account: str) -> None:
    assert storage_account(make_settings(tmp_path, BatchdropStorage=connection)) == account


def test_our_account_comes_from_the_blob_service_uri_with_managed_identity(tmp_path: Path) -> None:
    assert storage_account(make_settings(tmp_path, **IDENTITY)) == "ours"


def test_a_connection_string_naming_no_account_is_a_config_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, BatchdropStorage="DefaultEndpointsProtocol=https;AccountKey=k==")
    with pytest.raises(ConfigError, match="BatchdropStorage: the connection string has neither AccountName"):
        storage_account(settings)


def test_event_for_our_account_submits_the_blob(azure_world: World) -> None:
    azure_world.blobs.put("input", "a.txt")
    outcome = submit_event(azure_world.gw, azure_event("ours", "a.txt"))
    assert outcome.action == "created"
    assert len(azure_world.batch.all_tasks()) == 1


@pytest.mark.parametrize(
    ("url_account", "topic_account"),
    [("theirs", "theirs"), ("ours", "theirs"), ("theirs", "ours")],
    ids=["both", "topic-only", "url-only"],
)
def test_event_for_another_account_is_refused_naming_it(
    azure_world: World, url_account: str, topic_account: str
) -> None:
    azure_world.blobs.put("input", "a.txt")  # same container and name in our account: never looked up
    with pytest.raises(RejectedInput, match="in storage account 'theirs', not this app's account 'ours'"):
        submit_event(azure_world.gw, azure_event(url_account, "a.txt", topic_account))
    assert azure_world.batch.all_tasks() == []
    assert azure_world.ledger.input_rows == {}


def test_event_naming_no_account_is_refused(azure_world: World) -> None:
    azure_world.blobs.put("input", "a.txt")
    created = parse_blob_created("evt-1", {}, "/blobServices/default/containers/input/blobs/a.txt", "t")
    with pytest.raises(RejectedInput, match=r"neither topic nor data\.url names a storage account"):
        submit_event(azure_world.gw, created)
    assert azure_world.batch.all_tasks() == []


def test_azurite_event_is_ours_locally(tmp_path: Path) -> None:
    world = make_world(tmp_path)  # UseDevelopmentStorage=true
    world.blobs.put("input", "a.txt")
    data = {"url": "http://127.0.0.1:10000/devstoreaccount1/input/a.txt"}
    created = parse_blob_created("evt-1", data, "", "/subscriptions/x/storageAccounts/devstoreaccount1")
    assert submit_event(world.gw, created).action == "created"
    foreign = parse_blob_created("evt-2", {"url": "http://127.0.0.1:10000/otheraccount/input/a.txt"}, "", "")
    with pytest.raises(RejectedInput, match="'otheraccount'"):
        submit_event(world.gw, foreign)


# The event's version of the blob: data.eTag and the event time, used instead of a Get Blob Properties (issue 16).
AZURITE_TOPIC = "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/devstoreaccount1"
WRITTEN = datetime(2026, 3, 4, 5, 6, 7, 891234, tzinfo=UTC)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)  # UseDevelopmentStorage=true: account devstoreaccount1


def local_event(name: str, etag: object = None, event_time: object = WRITTEN, container: str = "input",
                size: object = 12) -> BlobCreated:  # fmt: skip
    """A BlobCreated event for an Azurite blob, with data.eTag when `etag` is given."""
    data: dict[str, object] = {"url": f"http://127.0.0.1:10000/devstoreaccount1/{container}/{name}",
                               "api": "PutBlob", "contentLength": size}  # fmt: skip
    if etag is not None:
        data["eTag"] = etag
    return parse_blob_created("evt-1", data, "", AZURITE_TOPIC, event_time)


def test_the_event_carries_the_blobs_etag_time_and_size() -> None:
    created = local_event("a.txt", '"0x8DC0FFEE"', "2026-03-04T05:06:07.8912345Z")
    assert (created.etag, created.event_time, created.size) == ("0x8DC0FFEE", WRITTEN, 12)
    assert created.event_time is not None and created.event_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("event_time", "expected"),
    [
        (WRITTEN, WRITTEN),
        (WRITTEN.replace(tzinfo=None), WRITTEN),  # the Functions worker's parse of a time without an offset
        (WRITTEN.astimezone(timezone(timedelta(hours=2))), WRITTEN),
        ("2026-03-04T07:06:07.891234+02:00", WRITTEN),
        ("2026-03-04T05:06:07.891234", WRITTEN),  # Event Grid's times are UTC
        (None, None),
        ("", None),
        ("yesterday", None),
        (1767225600, None),
        (["2026-03-04T05:06:07Z"], None),
    ],
)
def test_the_event_time_is_utc_or_absent_when_malformed(event_time: object, expected: datetime | None) -> None:
    created = local_event("a.txt", "0x1", event_time)
    assert created.event_time == expected
    assert created.event_time is None or created.event_time.tzinfo is UTC


@pytest.mark.parametrize("etag", [None, 7, "", '""', " ", ["0x1"], {"value": "0x1"}, "0x" + "8" * 200])
def test_a_missing_or_malformed_etag_is_absent_not_a_crash(etag: object) -> None:
    assert local_event("a.txt", etag).etag is None


@pytest.mark.parametrize("size", [None, "12", -1, True, 1.5])
def test_a_malformed_content_length_is_zero(size: object) -> None:
    assert local_event("a.txt", "0x1", size=size).size == 0


def test_an_event_with_an_etag_is_submitted_without_reading_the_blob(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    outcome = submit_event(world.gw, local_event("a.txt", blob.etag, world.clock()))
    assert outcome.action == "created"
    assert world.blobs.property_reads == 0
    assert len(world.batch.all_tasks()) == 1


def test_the_events_task_is_the_one_the_sweep_derives(world: World) -> None:
    """Azure's event says `0x8D…`, a listing `"0x8D…"`: one input, one task, whichever path comes first."""
    blob = world.blobs.put("input", "dir/a b.txt")
    bare, quoted = blob.etag, f'"{blob.etag}"'  # the fake's etags are bare
    outcome = submit_event(world.gw, local_event("dir/a%20b.txt", bare, world.clock()))
    assert outcome.task_id == ids.task_id("input", "dir/a b.txt", quoted) == ids.task_id("input", "dir/a b.txt", bare)
    assert sweep(world.gw).submitted == 0  # the sweep lists the blob and finds its task known
    assert world.batch.all_tasks() == [(outcome.job_id, outcome.task_id)]
    (row,) = world.ledger.inputs()
    assert row.etag == bare


def test_the_event_time_picks_the_job_window(world: World) -> None:
    world.blobs.put("input", "a.txt")
    written = world.clock() - timedelta(minutes=3 * world.gw.settings.job_window_minutes)
    created = local_event("a.txt", "0x1", written.isoformat())
    outcome = submit_event(world.gw, created)
    assert outcome.job_id == ids.job_id("report", written, world.gw.settings.job_window_minutes)


def test_a_repeated_delivery_reads_no_blob_either(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    created = local_event("a.txt", blob.etag, world.clock())
    assert submit_event(world.gw, created).action == "created"
    requests = sum(world.batch.requests.values())
    assert submit_event(world.gw, created).action == "duplicate"
    assert sum(world.batch.requests.values()) == requests
    assert world.blobs.property_reads == 0


@pytest.mark.parametrize("missing", ["etag", "time"])
def test_an_event_without_etag_or_time_reads_the_blob(world: World, missing: str) -> None:
    blob = world.blobs.put("input", "a.txt")
    created = local_event("a.txt", None if missing == "etag" else blob.etag, None if missing == "time" else WRITTEN)
    outcome = submit_event(world.gw, created)
    assert outcome.action == "created" and world.blobs.property_reads == 1
    assert outcome.job_id == ids.job_id("report", blob.created_on, world.gw.settings.job_window_minutes)


def test_an_event_time_in_the_future_is_not_trusted_for_the_job(world: World) -> None:
    blob = world.blobs.put("input", "a.txt")
    ahead = world.clock() + MAX_CLOCK_SKEW + timedelta(days=400)
    outcome = submit_event(world.gw, local_event("a.txt", blob.etag, ahead))
    assert world.blobs.property_reads == 1
    assert outcome.job_id == ids.job_id("report", blob.created_on, world.gw.settings.job_window_minutes)


def test_an_event_without_etag_for_a_missing_blob_is_refused(world: World) -> None:
    with pytest.raises(RejectedInput, match=r"input/ghost\.txt: no such blob"):
        submit_event(world.gw, local_event("ghost.txt"))
    assert world.blobs.property_reads == 1
    assert world.batch.all_tasks() == []


def test_an_event_with_etag_for_another_container_is_refused_without_a_read(world: World) -> None:
    world.blobs.put("other", "a.txt")
    with pytest.raises(RejectedInput, match=r"other/a\.txt: not in the input container 'input'"):
        submit_event(world.gw, local_event("a.txt", "0x1", WRITTEN, container="other"))
    assert world.blobs.property_reads == 0 and world.batch.all_tasks() == []


def test_a_deleted_blobs_event_runs_a_task_whose_download_failure_is_published(world: World) -> None:
    """The cost of trusting the event: a blob gone before the claim (or a forged event) is not refused at
    ingest; its task fails downloading the input and the manifest says so."""
    outcome = submit_event(world.gw, local_event("gone.txt", "0x8DDEAD", world.clock()))
    assert outcome.action == "created"
    world.batch.fail(outcome.job_id, outcome.task_id, None, "usererror", "BlobNotFound")
    poll(world.gw)
    (completion,) = world.queue.drain()
    assert collect(world.gw, completion).action == "published"
    manifest = json.loads(world.blobs.text("results", "gone.txt/_manifest.json"))
    assert (manifest["status"], manifest["input_etag"], manifest["task_id"]) == ("failed", "0x8DDEAD", outcome.task_id)
    assert manifest["failure"]["code"] == "BlobNotFound"
