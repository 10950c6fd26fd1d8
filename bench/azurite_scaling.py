"""`python -m bench.azurite_scaling`: how Azurite's (in-memory) cost per request grows with what it holds.

Why it exists: at 10,000 files the local bench is bound by Azurite, not by batchdrop. This probe fills a fresh
Azurite with blobs and times the requests collect makes per input (median of 5 each). Measured 2026-11-24
(`--blobs 0 20000 40000`): `delete container` 2.4 / 78 / 150 ms and `list a 1-blob container` 3.3 / 14 / 25 ms,
linear in the blobs held (Azurite's LokiJS store filters both by scanning the account's blobs, blocking its one
event loop meanwhile); create, get properties and copy stay flat (2-13 ms).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContainerClient

from local.stack import start_azurite

REPEATS = 5


def _median_ms(call: Callable[[], object]) -> float:
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        samples.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(samples), 1)


def probe(service: BlobServiceClient) -> dict[str, float]:
    """The per-input requests of collect, each timed on its own small container."""
    made: list[ContainerClient] = []

    def create() -> None:
        container = service.create_container(f"probe{uuid.uuid4().hex[:10]}")
        container.upload_blob("out/x", b"x")
        made.append(container)

    figures = {"create container + 1 blob": _median_ms(create)}
    container = made[-1]
    source = container.get_blob_client("out/x").url
    figures["get blob properties"] = _median_ms(lambda: container.get_blob_client("out/x").get_blob_properties())
    figures["list a 1-blob container"] = _median_ms(lambda: list(container.list_blobs()))
    figures["copy a blob"] = _median_ms(lambda: container.get_blob_client("out/y").start_copy_from_url(source))
    figures["delete container"] = _median_ms(lambda: made.pop().delete_container())
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.azurite_scaling", description=__doc__)
    parser.add_argument("--blobs", type=int, nargs="+", default=[0, 10000, 20000])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="azurite-scaling-") as workdir:
        azurite = start_azurite(Path(workdir), in_memory=True)
        try:
            service = BlobServiceClient.from_connection_string(azurite.connection_string)
            fill = service.create_container("fill")
            held = 0
            for target in sorted(args.blobs):
                with ThreadPoolExecutor(16) as pool:
                    list(pool.map(lambda index: fill.upload_blob(f"f/{index:07}", b"d"), range(held, target)))
                held = max(held, target)
                print(f"blobs held {held:>7}: {probe(service)}", flush=True)
        finally:
            azurite.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
