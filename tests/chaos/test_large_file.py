"""A 1 GiB input through the whole running app, beside a few small inputs and a zero-byte one.

The test streams the file into `input` in 8 MiB blocks, so it never holds it either. The task (the demo
app `report.py`, which reads its input in 1 MiB chunks) writes the byte count and SHA-256 it read, so the
manifest's outputs prove every byte reached the node. The dev host runs every function in its own process;
its peak resident set (VmHWM) shows that no function held the file: the trigger gets an SDK `BlobClient`,
submit passes a read SAS to Batch, and collect copies outputs server-side.
"""

from __future__ import annotations

import base64
import hashlib
import json
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobBlock

from local.stack import PROJECT_ROOT
from shared import ids
from tests.chaos.harness import APPS, INPUT, RESULTS, ChaosStack, Tally, Verdict, pipeline, record, verify

# Uploading 1 GiB, downloading it to a node and hashing it twice takes minutes on 2 busy cores.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

MIB = 1024 * 1024
BLOCK_BYTES = 8 * MIB
LARGE_BYTES = 1024 * MIB
LARGE = "large/one-gib.bin"
SMALL = {
    "large/small-1.txt": b"a small input beside the large one\n",
    "large/small-2.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(1000)),
    "large/small-3.txt": bytes(range(256)) * 64,
    "large/empty.bin": b"",
}
REPORT_APP = "report/report.py"
PIPELINES = [
    pipeline(
        "large",
        "large/",
        command="python3 {app_dir}/report/report.py {input} {output_dir}",
        app_files=[REPORT_APP],
        max_wall_clock_seconds=1200,
    )
]
# The dev host's peak RSS after the small inputs alone was 77 MiB in the first run (imports, the SDKs, the
# HTTP server, timers), and 78 MiB after the 1 GiB input. Holding the file, even once, would add 1,024 MiB;
# 400 MiB leaves room for a slower machine, allocator noise and SDK buffers while staying far below one copy.
HOST_PEAK_RSS_LIMIT_MIB = 400
# Growth of the host's peak while the 1 GiB input went through: a few 4-8 MiB SDK buffers at most.
HOST_PEAK_GROWTH_LIMIT_MIB = 128

_PATTERN = bytes(range(256)) * (BLOCK_BYTES // 256)


def large_block(index: int) -> bytes:
    """Block `index` of the 1 GiB input: its number, then a byte pattern, so no two blocks are alike."""
    header = b"block %08d\n" % index
    return header + _PATTERN[len(header) :]


def upload_large(stack: ChaosStack) -> str:
    """Stage the 1 GiB input block by block and commit it (one BlobCreated); its SHA-256, computed on the way."""
    blob = stack.blob_service().get_blob_client(INPUT, LARGE)
    digest = hashlib.sha256()
    blocks: list[BlobBlock] = []
    for index in range(LARGE_BYTES // BLOCK_BYTES):
        data = large_block(index)
        digest.update(data)
        block_id = base64.b64encode(b"%08d" % index).decode()
        blob.stage_block(block_id, data)
        blocks.append(BlobBlock(block_id))
    blob.commit_block_list(blocks)
    return digest.hexdigest()


def peak_rss_mib(pid: int) -> float:
    """The dev host's peak resident set since it started (VmHWM), in MiB."""
    command_line = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"local.host" in command_line, f"pid {pid} is not the dev host: {command_line}"
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@dataclass
class Outcome:
    verdict: Verdict
    missing: set[str]
    reports: dict[str, dict[str, Any]]
    expected: dict[str, tuple[int, str]]  # input name: (bytes, sha256)
    host_peak_small_mib: float
    host_peak_mib: float
    host_alive: bool
    host_starts: int


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    workdir = tmp_path_factory.mktemp("large-file")
    stack = ChaosStack(workdir, PIPELINES)
    try:
        stack.start()
        assert stack.host is not None
        apps = stack.blob_service().get_container_client(APPS)
        apps.upload_blob(REPORT_APP, (PROJECT_ROOT / "apps" / "report" / "report.py").read_bytes())
        began = time.monotonic()
        stack.drop(SMALL)
        missing = stack.wait_for_manifests(SMALL, timeout=180)
        host_peak_small = peak_rss_mib(stack.host.pid)

        upload_began = time.monotonic()
        large_sha256 = upload_large(stack)
        upload_seconds = time.monotonic() - upload_began
        missing |= stack.wait_for_manifests([LARGE], timeout=900)
        large_seconds = time.monotonic() - upload_began
        host_peak = peak_rss_mib(stack.host.pid)

        names = [*SMALL, LARGE]
        verdict = verify(stack, names, check_echo=False)
        results = stack.blob_service().get_container_client(RESULTS)
        reports = {
            name: json.loads(results.download_blob(ids.result_prefix(name) + "report.json").readall())
            for name, manifest in verdict.manifests_by_name.items()
            if manifest.get("status") == "succeeded"
        }
        expected = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in SMALL.items()}
        expected[LARGE] = (LARGE_BYTES, large_sha256)
        test_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        record(Tally.of(
            "large file", f"one 1 GiB input (streamed in {BLOCK_BYTES // MIB} MiB blocks) beside "
            f"{len(SMALL)} small ones (one zero-byte)", 1, verdict, time.monotonic() - began,
            notes=f"dev host peak RSS (VmHWM) {host_peak_small:.0f} MiB after the small inputs, {host_peak:.0f} "
            f"MiB after the 1 GiB input (bound {HOST_PEAK_RSS_LIMIT_MIB} MiB); 1 GiB upload {upload_seconds:.1f} s, "
            f"upload to manifest {large_seconds:.1f} s; the task read {reports.get(LARGE, {}).get('bytes')} bytes, "
            f"SHA-256 {'as uploaded' if reports.get(LARGE, {}).get('sha256') == large_sha256 else 'DIFFERENT'}; "
            f"test process peak RSS {test_peak:.0f} MiB"))  # fmt: skip
        yield Outcome(
            verdict, missing, reports, expected, host_peak_small, host_peak, stack.host.alive(), stack.host_starts
        )
    finally:
        stack.stop()
        # 1 GiB in Azurite's extents and 1 GiB on the emulator's node; the logs stay for a post-mortem.
        for data_dir in ("azurite", "batch"):
            shutil.rmtree(workdir / data_dir, ignore_errors=True)


def test_every_input_has_one_succeeded_manifest_and_one_task(outcome: Outcome) -> None:
    verdict = outcome.verdict
    assert not outcome.missing
    assert verdict.lost == []
    assert verdict.manifests == verdict.inputs == len(SMALL) + 1
    assert verdict.succeeded == verdict.inputs
    assert verdict.duplicate_manifests == 0
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert verdict.misfiled == []


def test_the_task_read_every_byte_of_every_input(outcome: Outcome) -> None:
    read = {name: (report["bytes"], report["sha256"]) for name, report in outcome.reports.items()}
    assert read == outcome.expected


def test_the_dev_host_never_held_the_file(outcome: Outcome) -> None:
    assert outcome.host_alive and outcome.host_starts == 1  # one incarnation: its VmHWM covers the whole run
    assert outcome.host_peak_mib < HOST_PEAK_RSS_LIMIT_MIB, outcome
    assert outcome.host_peak_mib - outcome.host_peak_small_mib < HOST_PEAK_GROWTH_LIMIT_MIB, outcome
