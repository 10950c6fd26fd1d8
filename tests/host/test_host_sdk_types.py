"""SDK-typed blob triggers: the dev host passes an SDK BlobClient, as the Python worker does, never the content."""

from __future__ import annotations

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob_types
import pytest
from azure.storage.blob import BlobClient, BlobProperties

from local.host.bindings import read_functions
from local.host.blobs import sdk_blob_client
from local.host.settings import AppSettings

CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
    "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
)


def sdk_app() -> func.FunctionApp:
    app = func.FunctionApp()

    @app.blob_trigger(arg_name="client", path="drop/{name}", connection="SdkStorage", source=func.BlobSource.EVENT_GRID)
    def on_blob(client: blob_types.BlobClient) -> None:
        pass

    return app


def test_an_sdk_annotated_blob_trigger_is_recognised() -> None:
    (spec,) = read_functions(sdk_app(), AppSettings({"SdkStorage": CONNECTION}))
    assert spec.trigger_data == "sdk"
    assert spec.sdk_type is blob_types.BlobClient


def test_the_function_gets_a_blob_client_for_exactly_its_blob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SdkStorage", CONNECTION)
    properties = BlobProperties()
    properties.container, properties.name = "drop", "dir/a b ☃.txt"
    client = sdk_blob_client(blob_types.BlobClient, "SdkStorage", properties)
    assert isinstance(client, BlobClient)
    assert (client.container_name, client.blob_name) == ("drop", "dir/a b ☃.txt")
    assert client.url.startswith("http://127.0.0.1:1/devstoreaccount1/drop/dir/a%20b%20")
