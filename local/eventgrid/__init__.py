"""The local Event Grid: Azurite raises no events, so a proxy in front of its blob service sees each committed
block blob and delivers `Microsoft.Storage.BlobCreated` to the subscriptions of one file, with Event Grid's
validation handshake, batching, retries and dead letters. `python -m local.eventgrid --help`; docs/internals.md.
"""
