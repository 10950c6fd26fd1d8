"""What the local Event Grid's proxy costs per request: `python -m local.eventgrid.measure [--files 1000]`.

Starts its own Azurite (in memory) and a local Event Grid with one subscription to a receiver in this process,
uploads the same small files directly to Azurite and through the proxy, one at a time (latency per upload) and
from 16 threads (throughput), and prints the figures that docs/internals.md quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from azure.storage.blob import BlobServiceClient, ContainerClient

from local.stack import start_azurite, start_eventgrid


def _receiver() -> tuple[ThreadingHTTPServer, list[int]]:
    delivered: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            events = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            answer = b"{}"
            if self.headers.get("aeg-event-type") == "SubscriptionValidation":
                answer = json.dumps({"validationResponse": events[0]["data"]["validationCode"]}).encode()
            else:
                delivered.append(len(events))
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, delivered


def _sequential(container: ContainerClient, files: int, tag: str) -> list[float]:
    latencies = []
    for index in range(files):
        started = time.perf_counter()
        container.upload_blob(f"{tag}/seq-{index:05}.txt", b"small file\n")
        latencies.append(time.perf_counter() - started)
    return latencies


def _parallel(container: ContainerClient, files: int, tag: str) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda index: container.upload_blob(f"{tag}/par-{index:05}.txt", b"small file\n"),
                      range(files)))
    return files / (time.perf_counter() - started)


def _figures(label: str, latencies: list[float], rate: float) -> str:
    ordered = sorted(latencies)
    p95 = ordered[int(len(ordered) * 0.95) - 1]
    return (f"{label:8} p50 {statistics.median(latencies) * 1000:6.2f} ms  p95 {p95 * 1000:6.2f} ms  "
            f"mean {statistics.fmean(latencies) * 1000:6.2f} ms  16 threads {rate:6.0f} uploads/s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m local.eventgrid.measure")
    parser.add_argument("--files", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir_name:
        workdir = Path(workdir_name)
        azurite = start_azurite(workdir, in_memory=True)
        server, delivered = _receiver()
        subscriptions = workdir / "subscriptions.json"
        subscriptions.write_text(json.dumps({"subscriptions": [
            {"name": "measured", "endpoint": "/events", "subject_begins_with": "/blobServices/default/containers/via/",
             "max_events_per_batch": 100, "preferred_batch_size_kb": 1024}]}))
        grid = start_eventgrid(workdir, azurite, f"http://127.0.0.1:{server.server_address[1]}", subscriptions)
        try:
            direct = BlobServiceClient.from_connection_string(azurite.connection_string).create_container("direct")
            via = BlobServiceClient.from_connection_string(grid.connection_string).create_container("via")
            runs: dict[str, Callable[[], tuple[list[float], float]]] = {
                "direct": lambda: (_sequential(direct, args.files, "a"), _parallel(direct, args.files, "a")),
                "proxy": lambda: (_sequential(via, args.files, "a"), _parallel(via, args.files, "a")),
            }
            _sequential(direct, 50, "warm"), _sequential(via, 50, "warm")
            for label, run in runs.items():
                latencies, rate = run()
                print(_figures(label, latencies, rate), flush=True)
            expected = 2 * args.files + 50
            deadline = time.monotonic() + 120
            while sum(delivered) < expected and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"events delivered {sum(delivered)} of {expected} in {len(delivered)} deliveries "
                  f"(largest batch {max(delivered, default=0)})")
        finally:
            grid.stop()
            server.shutdown()
            azurite.kill()


if __name__ == "__main__":
    main()
