from shared.storage import AzureBlobs


def test_development_storage_shorthand_signs_with_azurites_key() -> None:
    """`UseDevelopmentStorage=true` (local.settings.sample.json) has no AccountKey part, yet needs account SAS."""
    blobs = AzureBlobs.from_connection_string("UseDevelopmentStorage=true")
    url = blobs.read_url("input", "a b.txt", 60)
    assert url.startswith("http://127.0.0.1:10000/devstoreaccount1/input/a%20b.txt?")
    assert "sp=r" in url and "sig=" in url
