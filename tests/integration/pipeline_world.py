"""Real gateways over Azurite and the Batch emulator, each test in its own containers, queue and table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContainerClient

from local.stack import Azurite, Emulator
from shared import ids
from shared.collect import collect
from shared.gateways import Gateways, build_gateways
from shared.poll import poll
from shared.settings import load_settings
from tests.waiting import wait_until

# How often a wait that drains the completions queue (and so polls Batch) checks: slower than the suite's default.
DRAIN_INTERVAL = 0.3
# A tiny application: a report of the input, or exit 3 when the input starts with "#fail".
APP = """\
import hashlib, json, os, sys
source, out = sys.argv[1], sys.argv[2]
data = open(source, "rb").read()
if data.startswith(b"#fail"):
    sys.stderr.write("refusing " + os.path.basename(source) + ": it asks to fail\\n")
    sys.exit(3)
os.makedirs(os.path.join(out, "nested"), exist_ok=True)
json.dump({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, open(os.path.join(out, "report.json"), "w"))
open(os.path.join(out, "nested", "upper.txt"), "wb").write(data.upper())
print("processed", len(data), "bytes")
"""


@dataclass
class PipelineWorld:
    gw: Gateways
    blob_service: BlobServiceClient
    names: dict[str, str]
    emulator: Emulator

    def container(self, role: str) -> ContainerClient:
        return self.blob_service.get_container_client(self.names[role])

    def drop(self, name: str, data: bytes) -> None:
        self.container("input").upload_blob(name, data, overwrite=True)

    def manifest(self, name: str) -> dict[str, object] | None:
        return self.gw.blobs.read_json(self.names["results"], f"{ids.result_prefix(name)}_manifest.json")

    def drain_completions(self) -> int:
        """Run the poll and the collector until the queue is empty; returns events collected."""
        from azure.storage.queue import QueueClient

        queue = QueueClient.from_connection_string(self.connection_string, self.names["queue"])
        collected = 0
        poll(self.gw)
        for message in queue.receive_messages(messages_per_page=32, visibility_timeout=30):
            from shared.messages import decode_completions  # the poll's: many completions to a message
            from shared.models import CompletionEvent

            for event in decode_completions(message.content):
                assert isinstance(event, CompletionEvent), event
                collect(self.gw, event)
                collected += 1
            queue.delete_message(message)
        return collected

    @property
    def connection_string(self) -> str:
        return str(self.gw.settings.storage_connection_string)

    def run_until_manifests(self, names: list[str], timeout: float = 90) -> dict[str, dict[str, object]]:
        found: dict[str, dict[str, object]] = {}

        def all_published() -> bool:
            self.drain_completions()
            for name in names:
                if name not in found:
                    manifest = self.manifest(name)
                    if manifest is not None:
                        found[name] = manifest
            return len(found) == len(names)

        wait_until(all_published, timeout, interval=DRAIN_INTERVAL, what=f"manifests of {names}")
        return found


def echo_pipelines(namespace: str) -> dict[str, object]:
    """A pipelines file with one pipeline running the echo app (APP) on its own one-node pool."""
    return {
        "pipelines": [
            {
                "name": f"echo-{namespace}",
                "command": "python3 {app_dir}/echo/app.py {input} {output_dir}",
                "app_files": ["echo/app.py"],
                "outputs": ["**/*"],
                "pool": {"id": f"pool-{namespace}", "dedicated_nodes": 1, "task_slots_per_node": 4},
                "max_retries": 0,
                "max_wall_clock_seconds": 120,
            }
        ]
    }


def make_pipeline_world(
    tmp_path: Path, azurite: Azurite, emulator: Emulator, namespace: str, **settings: object
) -> PipelineWorld:
    names = {
        "input": f"input-{namespace}",
        "apps": f"apps-{namespace}",
        "staging": f"st{namespace}",
        "results": f"results-{namespace}",
        "queue": f"completions-{namespace}",
        "table": f"ledger{namespace}",
    }
    pipelines = echo_pipelines(namespace)
    pipelines_file = tmp_path / "pipelines.json"
    pipelines_file.write_text(json.dumps(pipelines))
    values: dict[str, object] = {
        "BatchdropStorage": azurite.connection_string,
        "BATCHDROP_BATCH_URL": emulator.url,
        "BATCHDROP_BATCH_ACCOUNT_NAME": emulator.account_name,
        "BATCHDROP_BATCH_ACCOUNT_KEY": emulator.account_key,
        "BATCHDROP_PIPELINES_FILE": str(pipelines_file),
        "BATCHDROP_INPUT_CONTAINER": names["input"],
        "BATCHDROP_APPS_CONTAINER": names["apps"],
        "BATCHDROP_STAGING_PREFIX": names["staging"],
        "BATCHDROP_RESULTS_CONTAINER": names["results"],
        "BATCHDROP_COMPLETIONS_QUEUE": names["queue"],
        "BATCHDROP_LEDGER_TABLE": names["table"],
        "BATCHDROP_POLL_OVERLAP_SECONDS": 5,
    }
    values.update(settings)
    gw = build_gateways(load_settings(**values))
    blob_service = BlobServiceClient.from_connection_string(azurite.connection_string)
    for role in ("input", "apps", "results"):
        blob_service.create_container(names[role])
    blob_service.get_container_client(names["apps"]).upload_blob("echo/app.py", APP.encode())
    return PipelineWorld(gw, blob_service, names, emulator)
