"""The files a user copies or deploys: local.settings.sample.json, .funcignore, samples/pipelines.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

from local.batch.account import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME
from shared.pipelines import load_pipelines
from shared.settings import Settings, load_settings

PROJECT = Path(__file__).resolve().parents[2]


def sample_values() -> dict[str, str]:
    document = json.loads((PROJECT / "local.settings.sample.json").read_text())
    assert document["IsEncrypted"] is False
    values: dict[str, str] = document["Values"]
    assert all(isinstance(value, str) for value in values.values())
    return values


def test_sample_settings_name_every_setting_batchdrop_reads() -> None:
    values = sample_values()
    identity_only = {f"BatchdropStorage__{kind}ServiceUri" for kind in ("blob", "queue", "table")}
    aliases = {field.alias for field in Settings.model_fields.values()} - identity_only

    assert aliases <= set(values), sorted(aliases - set(values))
    # Settings that bindings read with %NAME% are app settings too.
    referenced = set(re.findall(r"%(\w+)%", (PROJECT / "shared" / "triggers" / "timers.py").read_text()))
    assert referenced <= set(values)
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == values["BatchdropStorage"] == "UseDevelopmentStorage=true"


def test_sample_settings_are_valid_and_point_at_the_local_emulator() -> None:
    values = sample_values()

    settings = load_settings(**values)

    assert (settings.batch_account_name, settings.batch_account_key) == (DEV_ACCOUNT_NAME, DEV_ACCOUNT_KEY)
    assert settings.batch_url.startswith("http://127.0.0.1:")
    assert load_pipelines(PROJECT / values["BATCHDROP_PIPELINES_FILE"]).by_name("report") is not None


def test_funcignore_leaves_out_everything_but_the_app() -> None:
    rules = {line.strip() for line in (PROJECT / ".funcignore").read_text().splitlines()}

    for excluded in (".venv", "node_modules", "tests", "local", "bench", ".batchdrop", "docs"):
        assert excluded in rules
    assert {"samples/*", "!samples/pipelines.json"} <= rules
    for kept in ("function_app.py", "host.json", "requirements.txt", "shared"):
        assert kept not in rules


def test_demo_pipeline_matches_the_documented_shape() -> None:
    pipeline = load_pipelines(PROJECT / "samples" / "pipelines.json").by_name("report")

    assert pipeline is not None
    assert pipeline.command_line("input/x.txt") == "python3 app/report/report.py input/x.txt out"
    assert pipeline.app_files == ("report/report.py",)
    # vm_size and scale come from the deployment's pool defaults (local: 2 fixed nodes, as in the sample settings)
    assert (pipeline.pool.id, pipeline.pool.fixed_nodes(), pipeline.pool.task_slots_per_node) == (
        "batchdrop-pool", (2, 0), 2,
    )  # fmt: skip
    assert pipeline.max_wall_clock_seconds == 300
