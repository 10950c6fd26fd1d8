"""The naive way, written to the published samples' pattern, for comparison only.

A blob trigger adds one task with a random id per event, a monitor lists every task of the job on every
poll, and a collector downloads each output and uploads it again into results.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from azure.batch import BatchClient
from azure.batch import models as batch_models
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

from shared.storage import AzureBlobs


@dataclass
class Baseline:
    batch: BatchClient
    blob_service: BlobServiceClient
    blobs: AzureBlobs
    job_id: str
    pool_id: str
    containers: dict[str, str]
    command: str
    collected: set[str] = field(default_factory=set)
    output_bytes: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)  # the bench's --stop-after, not the sample's
    # The latency scenario's observation, not the sample's: per source name, when its collection started and ended.
    collect_times: dict[str, tuple[float, float]] = field(default_factory=dict)

    def on_event(self, name: str) -> None:
        """One event: make sure the job exists, then add a task with a fresh random id."""
        try:
            self.batch.create_job(
                batch_models.BatchJobCreateOptions(
                    id=self.job_id, pool_info=batch_models.BatchPoolInfo(pool_id=self.pool_id)
                )
            )
        except ResourceExistsError:
            pass
        task_id = f"task-{uuid.uuid4().hex}"
        input_url = self.blobs.read_url(self.containers["input"], name, 3600)
        staging_url = self.blobs.write_url(self.containers["staging"], 3600)
        self.batch.create_task(
            self.job_id,
            batch_models.BatchTaskCreateOptions(
                id=task_id,
                command_line=self.command,
                resource_files=[batch_models.ResourceFile(http_url=input_url, file_path="input/data")],
                environment_settings=[
                    batch_models.EnvironmentSetting(name="BATCHDROP_INPUT", value="input/data"),
                    batch_models.EnvironmentSetting(name="SOURCE_NAME", value=name),
                ],
                output_files=[
                    batch_models.OutputFile(
                        file_pattern="out/**/*",
                        destination=batch_models.OutputFileDestination(
                            container=batch_models.OutputFileBlobContainerDestination(
                                container_url=staging_url, path=f"{task_id}/out"
                            )
                        ),
                        upload_options=batch_models.OutputFileUploadConfiguration(upload_condition="taskCompletion"),
                    )
                ],
                constraints=batch_models.BatchTaskConstraints(max_wall_clock_time=timedelta(minutes=10)),
            ),
        )

    def poll_and_collect(self) -> int:
        """List every task of the job; download and re-upload outputs of newly completed ones."""
        published = 0
        try:
            tasks = list(self.batch.list_tasks(self.job_id))
        except ResourceNotFoundError:  # the first event has not created the job yet
            return 0
        for task in tasks:
            if self.stopping.is_set():
                break
            if task.state != "completed" or task.id in self.collected:
                continue
            source = next((env.value for env in task.environment_settings or [] if env.name == "SOURCE_NAME"), task.id)
            collect_started = time.time()
            staging = self.blob_service.get_container_client(self.containers["staging"])
            results = self.blob_service.get_container_client(self.containers["results"])
            outputs = []
            for blob in staging.list_blobs(name_starts_with=f"{task.id}/out/"):
                data = staging.download_blob(blob.name).readall()
                self.output_bytes += len(data)
                target = f"{source}/{blob.name.split('/out/', 1)[1]}"
                results.upload_blob(target, data, overwrite=True)
                outputs.append(target)
            info = task.execution_info
            manifest = {"input": source, "task_id": task.id, "exit_code": info.exit_code if info else None,
                        "outputs": outputs}  # fmt: skip
            results.upload_blob(f"{source}/_manifest.json", json.dumps(manifest), overwrite=True)
            self.collected.add(task.id)
            self.collect_times.setdefault(str(source), (collect_started, time.time()))
            published += 1
        return published
