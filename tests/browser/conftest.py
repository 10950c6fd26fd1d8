"""The status page in a real browser: Debian's headless Chromium, driven by Selenium through chromium-driver,
against a local stack (Azurite, the Batch emulator, the dev host running function_app.py unchanged).

The stack is this module's own: the app's containers, queue and ledger table have fixed names, so a stack that
shares Azurite with tests/e2e would list the e2e's inputs too (and give them ours). It starts in a few seconds.
`make tools` installs chromium and chromium-driver (as root, as CI is); elsewhere these tests skip, naming what
is missing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from local.cli.storage import prepare_storage
from local.stack import PROJECT_ROOT, Service, Stack, app_settings, start_azurite, start_emulator, start_host
from shared.pipelines import load_pipelines

GATE_APP = Path(__file__).with_name("gate.py")


def _browser_binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    missing = [name for name, found in (("chromium", chromium), ("chromium-driver", driver)) if not found]
    if missing:
        named = " ".join(missing)
        message = f"{named} not installed: run `make tools` as root (apt-get install {named})"
        if os.geteuid() == 0:
            pytest.fail(message)  # CI is root: `make tools` should have installed them
        pytest.skip(message)
    assert chromium is not None and driver is not None
    return chromium, driver


@dataclass
class PageStack:
    stack: Stack
    blobs: BlobServiceClient
    gate_dir: Path

    @property
    def page_url(self) -> str:
        assert self.stack.host is not None
        return f"{self.stack.host.url.rstrip('/')}/api/page"

    def drop(self, name: str, data: bytes) -> None:
        self.blobs.get_container_client("input").upload_blob(name, data, overwrite=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium, driver_path = _browser_binaries()
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,1100", "--lang=en-GB"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page_stack(tmp_path_factory: pytest.TempPathFactory, browser: object) -> Iterator[PageStack]:
    workdir = tmp_path_factory.mktemp("page")
    gate_dir = workdir / "gate"
    gate_dir.mkdir()
    pipelines = json.loads((PROJECT_ROOT / "samples" / "pipelines.json").read_text())
    report = next(p for p in pipelines["pipelines"] if p["name"] == "report")
    report["pool"] = {**report["pool"], "id": "page-pool", "dedicated_nodes": 1, "task_slots_per_node": 4}
    gated = {
        **report, "name": "gated", "match": {"prefix": "gated/", "glob": "*"},
        "command": "python3 {app_dir}/gate/gate.py {input} {output_dir}", "app_files": ["gate/gate.py"],
        "environment": {"GATE_DIR": str(gate_dir)},
    }  # fmt: skip
    pipelines_file = workdir / "pipelines.json"
    pipelines_file.write_text(json.dumps({"pipelines": [report, gated]}))
    load_pipelines(pipelines_file)  # fail here, naming the field, rather than in the host's log
    started: list[Service] = []
    try:
        azurite = start_azurite(workdir, in_memory=True)
        started.append(azurite)
        emulator = start_emulator(workdir)
        started.append(emulator)
        prepare_storage(azurite.connection_string)
        blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
        blobs.get_container_client("apps").upload_blob("gate/gate.py", GATE_APP.read_bytes(), overwrite=True)
        settings = app_settings(azurite, emulator, {
            "BATCHDROP_PIPELINES_FILE": str(pipelines_file),
            "BATCHDROP_POLL_SCHEDULE": "*/1 * * * * *",
            "BATCHDROP_POLL_OVERLAP_SECONDS": "5",
        })  # fmt: skip
        host = start_host(workdir, "function_app:app", settings, ["--blob-scan-seconds", "0.5"])
        started.append(host)
        yield PageStack(Stack(azurite, emulator, host), blobs, gate_dir)
    finally:
        for service in reversed(started):
            if service is started[0]:
                service.kill()  # Azurite, in memory: nothing to save, and it takes seconds to close gracefully
            else:
                service.stop()
