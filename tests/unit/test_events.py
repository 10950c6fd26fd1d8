"""Event Grid BlobCreated events: the blob they name, and refusal of events about another storage account."""

from pathlib import Path

import pytest

from shared.errors import ConfigError, RejectedInput
from shared.events import BlobCreated, parse_blob_created, storage_account, submit_event
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
