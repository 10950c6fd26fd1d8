"""Hostile and mistaken pipelines files are refused at load, each with a message naming the field."""

from __future__ import annotations

import copy
import json
import logging
import shlex
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError
from shared.pipelines import PipelineSet, load_pipelines
from shared.pools import MAX_FORMULA, pending_tasks_formula, secret_reason
from tests.unit.fakes import PIPELINE

PROJECT = Path(__file__).resolve().parents[2]
IDENTITY = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/pool-id"


def with_change(path: str, value: Any) -> dict[str, Any]:
    """PIPELINE with `value` set at a dotted path (created as needed)."""
    spec: dict[str, Any] = copy.deepcopy(PIPELINE)
    node = spec
    *parents, last = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return spec


def refusal(tmp_path: Path, *pipelines: dict[str, Any]) -> str:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"pipelines": list(pipelines)}))
    with pytest.raises(ConfigError) as raised:
        load_pipelines(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ")
    return message


def loads(tmp_path: Path, *pipelines: dict[str, Any]) -> PipelineSet:
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps({"pipelines": list(pipelines)}))
    return load_pipelines(path)


@pytest.mark.parametrize(
    ("path", "value", "field", "says"),
    [
        ("container.image", "Ubuntu:22.04", "container.image", "not an image reference"),
        ("container.image", "ubuntu:22.04; rm -rf /", "container.image", "not an image reference"),
        ("container.image", "-v/:/host", "container.image", "not an image reference"),
        ("container.image", "", "container.image", "at least 1 character"),
        ("container.tag", "x", "container.tag", "Extra inputs are not permitted"),
        ("container.working_directory", "/data", "container.working_directory", "taskWorkingDirectory"),
        ("container.run_options", "--rm\n--privileged", "container.run_options", "one line"),
    ],
)
def test_container_fields_are_checked(tmp_path: Path, path: str, value: Any, field: str, says: str) -> None:
    spec = with_change("container.image", "ubuntu:22.04")
    spec = {**spec, "container": {**spec["container"], path.split(".")[1]: value}}
    message = refusal(tmp_path, spec)
    assert f"pipelines['report'].{field}" in message and says in message


def test_a_container_needs_an_image(tmp_path: Path) -> None:
    message = refusal(tmp_path, with_change("container", {"run_options": "--rm"}))
    assert "pipelines['report'].container.image: Field required" in message


@pytest.mark.parametrize(
    ("registry", "says"),
    [
        ({"server": "r.azurecr.io", "username": "u", "password": "hunter2"}, "an inline password is refused"),
        ({"server": "r.azurecr.io", "username": "u"}, "both username and password_setting"),
        ({"server": "r.azurecr.io"}, "give identity, or both username and password_setting"),
        ({"server": "r.azurecr.io", "identity": IDENTITY, "username": "u", "password_setting": "P"}, "not both"),
        ({"server": "r.azurecr.io", "identity": "my-identity"}, "user-assigned managed identity's resource id"),
        ({"server": "r.azurecr.io", "username": "u", "password_setting": "REG PASS"}, "not an app setting name"),
        ({"server": "https://r.azurecr.io/x", "identity": IDENTITY}, "not a registry host name"),
        ({"server": "other.azurecr.io", "identity": IDENTITY}, "is not on registry 'other.azurecr.io'"),
    ],
)
def test_registry_credentials_never_inline(tmp_path: Path, registry: dict[str, str], says: str) -> None:
    message = refusal(tmp_path, with_change("container", {"image": "r.azurecr.io/tool:1", "registry": registry}))
    assert "pipelines['report'].container" in message and says in message
    assert "hunter2" not in message


def test_a_registry_with_an_identity_or_a_password_setting_loads(tmp_path: Path) -> None:
    registry = {"server": "r.azurecr.io", "identity": IDENTITY}
    by_identity = with_change("container", {"image": "r.azurecr.io/tool:1", "registry": registry})
    by_setting = {**with_change("container", {"image": "r.azurecr.io/tools/stats@sha256:" + "a" * 64,
                                              "registry": {"server": "r.azurecr.io", "username": "puller",
                                                           "password_setting": "REGISTRY_PASSWORD"}}),
                  "name": "other", "match": {"prefix": "b/"}}  # fmt: skip
    by_identity["match"] = {"prefix": "a/"}
    pipelines = loads(tmp_path, by_identity, by_setting)
    plan = pipelines.pool_plan("pool-1")
    assert [c.image for c in plan.containers] == ["r.azurecr.io/tool:1", "r.azurecr.io/tools/stats@sha256:" + "a" * 64]


@pytest.mark.parametrize(
    ("environment", "says"),
    [
        ({"1ST": "x"}, "must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"AZ_BATCH_NODE_ROOT_DIR": "/tmp"}, "AZ_BATCH_* names are set by Batch itself"),
        ({"batchdrop_input": "x"}, "BATCHDROP_* names are set by batchdrop itself"),
        ({"DB_PASSWORD": "x"}, "its name 'DB_PASSWORD' looks like a secret"),
        ({"API_KEY": "x"}, "its name 'API_KEY' looks like a secret"),
        ({"GITHUB_TOKEN": "x"}, "looks like a secret"),
        ({"URL": "https://a.blob.core.windows.net/c?sv=2024&sig=abc"}, "its value looks like a secret"),
        ({"CONN": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc=="}, "its value looks like a secret"),
        ({"CERT": "-----BEGIN PRIVATE KEY-----"}, "its value looks like a secret"),
        ({"OPAQUE": "Zm9vYmFyYmF6cXV4cXV1eEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFla"}, "long base64-like token"),
        ({"DIGEST": "0123456789abcdef0123456789abcdef"}, "long hex token"),
    ],
)
def test_environment_names_and_secret_looking_values_are_refused(
    tmp_path: Path, environment: dict[str, str], says: str
) -> None:
    message = refusal(tmp_path, {**PIPELINE, "environment": environment})
    assert "pipelines['report'].environment" in message and says in message
    if "looks like a secret" in says or "token" in says:
        assert "app setting" in message


def test_ordinary_environment_loads_and_reaches_the_task(tmp_path: Path) -> None:
    ordinary = {"THREADS": "4", "MODE": "fast", "PYTHONPATH": "/opt/tools/lib/python3.12/site-packages",
                "KEYBOARD": "us", "LOG_LEVEL": "INFO"}  # fmt: skip
    assert all(secret_reason(name, value) is None for name, value in ordinary.items())
    pipeline = loads(tmp_path, {**PIPELINE, "environment": ordinary}).pipelines[0]
    assert pipeline.environment == ordinary


@pytest.mark.parametrize(
    ("start_task", "field", "says"),
    [
        ({"command": "setup.sh", "elevation": "elevated"}, "start_task.elevation", "'nonadmin' or 'admin'"),
        ({"command": "setup.sh", "elevation": True}, "start_task.elevation", "'nonadmin' or 'admin'"),
        ({"command": "setup.sh", "run_as_root": True}, "start_task.run_as_root", "Extra inputs"),
        ({"command": ""}, "start_task.command", "at least 1 character"),
        ({"command": "a\nb"}, "start_task.command", "one line"),
        ({"command": "x", "resource_files": ["../etc/passwd"]}, "start_task.resource_files", "relative path"),
        ({"command": "x", "environment": {"SAS": "?sig=abc"}}, "start_task.environment", "looks like a secret"),
        ({"command": "x", "wait_for_success": "maybe"}, "start_task.wait_for_success", "boolean"),
    ],
)
def test_start_task_fields_are_checked(tmp_path: Path, start_task: dict[str, Any], field: str, says: str) -> None:
    message = refusal(tmp_path, with_change("pool.start_task", start_task))
    assert f"pipelines['report'].pool.{field}" in message and says in message


def test_an_admin_start_task_must_be_explicit_and_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.pools"):
        pipeline = loads(tmp_path, with_change("pool.start_task", {"command": "apt-get install -y tool"})).pipelines[0]
    assert pipeline.pool.start_task is not None and pipeline.pool.start_task.elevation == "nonadmin"
    assert pipeline.pool.start_task.wait_for_success is True
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="shared.pools"):
        loads(tmp_path, with_change("pool.start_task", {"command": "apt-get install -y tool", "elevation": "admin"}))
    assert [r.getMessage() for r in caplog.records] == ["pool pool-1: the start task runs as admin (elevation: admin)"]


@pytest.mark.parametrize(
    ("scale", "says"),
    [
        ({"auto": {"formula": "$TargetDedicatedNodes = 1;" * 400}}, "8,000"),
        ({"auto": {"formula": "$TargetDedicatedNodes = 1;" * 101}}, "101 statements"),
        (
            {"auto": {"formula": "$TargetDedicatedNodes = 1;", "evaluation_interval_minutes": 4}},
            "greater than or equal to 5",
        ),
        ({"auto": {"formula": "$TargetDedicatedNodes = 1;", "max_nodes": 3}}, "formula replaces max_nodes"),
        ({"auto": {"min_nodes": 0}}, "max_nodes is required"),
        ({"auto": {"min_nodes": 5, "max_nodes": 2}}, "min_nodes 5 is above max_nodes 2"),
        ({"auto": {"max_nodes": 2, "evaluation_interval_minutes": 10}}, "goes with a formula"),
        ({"auto": {"max_nodes": 2, "spot": "yes please"}}, "boolean"),
        ({"fixed": {"dedicated": -1}}, "greater than or equal to 0"),
        ({"fixed": {"dedicated": 1}, "auto": {"max_nodes": 2}}, "exactly one of fixed or auto"),
        ({}, "exactly one of fixed or auto"),
        ({"fixed": {"dedicated": 1, "low_priority": 1}}, "Extra inputs"),
    ],
)
def test_scale_is_fixed_or_auto_within_batchs_limits(tmp_path: Path, scale: dict[str, Any], says: str) -> None:
    spec = with_change("pool.scale", scale)
    del spec["pool"]["dedicated_nodes"]
    message = refusal(tmp_path, spec)
    assert "pipelines['report'].pool.scale" in message and says in message


def test_scale_and_the_node_count_shorthand_do_not_mix(tmp_path: Path) -> None:
    message = refusal(tmp_path, with_change("pool.scale", {"fixed": {"dedicated": 2}}))
    assert "pipelines['report'].pool: Value error, give scale or dedicated_nodes, not both" in message


def test_the_shorthand_is_fixed_scale(tmp_path: Path) -> None:
    shorthand = loads(tmp_path, with_change("pool.low_priority_nodes", 3)).pipelines[0].pool
    spec = with_change("pool.scale", {"fixed": {"dedicated": 1, "spot": 3}})
    del spec["pool"]["dedicated_nodes"]
    explicit = loads(tmp_path, spec).pipelines[0].pool
    assert shorthand.fixed_nodes() == explicit.fixed_nodes() == (1, 3)
    assert shorthand.autoscale() is None


def test_the_generated_formula_uses_the_documented_subset() -> None:
    formula = pending_tasks_formula(min_nodes=0, max_nodes=10, spot=False, idle_minutes=15, slots=4)
    assert formula.splitlines()[1:] == [
        "$samples = $PendingTasks.GetSamplePercent(TimeInterval_Minute * 15);",
        "$pending = $samples < 70 ? max($PendingTasks.GetSample(1)) : "
        "max($PendingTasks.GetSample(TimeInterval_Minute * 15));",
        "$wanted = $pending > 0 ? ceil($pending / 4) : 0;",
        "$TargetDedicatedNodes = max(0, min(10, $wanted));",
        "$TargetLowPriorityNodes = 0;",
        "$NodeDeallocationOption = taskcompletion;",
    ]
    assert len(formula) < MAX_FORMULA


def test_auto_scale_gets_a_generated_formula_every_5_minutes(tmp_path: Path) -> None:
    spec = with_change("pool.scale", {"auto": {"max_nodes": 6, "spot": True, "idle_minutes": 20}})
    del spec["pool"]["dedicated_nodes"]
    pool = loads(tmp_path, spec).pipelines[0].pool
    formula, minutes = pool.autoscale()  # type: ignore[misc]
    assert minutes == 5 and pool.fixed_nodes() is None
    assert "$TargetLowPriorityNodes = max(0, min(6, $wanted));" in formula and "ceil($pending / 2)" in formula


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"command": "run {package:stats}/x {input}"}, "{package:stats} names no entry of application_packages"),
        ({"command": "run {package:} {input}"}, "must name an application package id"),
        ({"command": "run {input:>20}"}, "takes no format spec"),
        ({"command": "run {input!r}"}, "takes no conversion"),
        ({"application_packages": [{"id": "stats"}, {"id": "stats", "version": "2"}]}, "stats listed more than once"),
        ({"application_packages": [{"id": "stats/../x"}]}, "should match pattern"),
        ({"application_packages": [{"id": "stats", "version": "1 0"}]}, "should match pattern"),
        ({"application_packages": [{"name": "stats"}]}, "Extra inputs"),
        ({"application_packages": [{"id": "s"}], "command": "run '{package:s}' {input}"}, "single quote"),
    ],
)
def test_application_packages_and_their_placeholders(tmp_path: Path, change: dict[str, Any], says: str) -> None:
    message = refusal(tmp_path, {**PIPELINE, **change})
    assert "pipelines['report']" in message and says in message


def test_a_package_placeholder_becomes_batchs_variable_under_a_shell(tmp_path: Path) -> None:
    pipeline = loads(
        tmp_path,
        {**PIPELINE, "command": "python3 {package:csv-stats}/stats.py {input} {output_dir} --app {app_dir}",
         "application_packages": [{"id": "csv-stats", "version": "1.2-b"}, {"id": "fonts"}]},
    ).pipelines[0]  # fmt: skip
    line = pipeline.command_line("input/data.csv")
    assert line == (
        '/bin/sh -c \'python3 "$AZ_BATCH_APP_PACKAGE_csv_stats_1_2_b"/stats.py '
        '"$AZ_BATCH_TASK_WORKING_DIR/$BATCHDROP_INPUT" "$AZ_BATCH_TASK_WORKING_DIR/$BATCHDROP_OUTPUT_DIR" '
        '--app "$AZ_BATCH_TASK_WORKING_DIR/app"\''
    )
    argv = shlex.split(line)  # as Batch (and the emulator) split a command line: no shell of its own
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    # a name that would mean something to a shell never reaches it: the input is a variable's value
    assert "data.csv" not in line
    assert pipeline.application_packages[1].variable() == "AZ_BATCH_APP_PACKAGE_fonts"


def test_without_packages_the_command_line_is_as_before(tmp_path: Path) -> None:
    pipeline = loads(tmp_path, PIPELINE).pipelines[0]
    assert pipeline.command_line("input/a.txt") == "python3 app/report/report.py input/a.txt out"
    container = {"image": "python:3.12-slim", "working_directory": "containerImageDefault"}
    in_image_dir = loads(tmp_path, {**PIPELINE, "container": container})
    assert (
        in_image_dir.pipelines[0]
        .command_line("input/a.txt")
        .startswith('/bin/sh -c \'python3 "$AZ_BATCH_TASK_WORKING_DIR/app"/report/report.py ')
    )


@pytest.mark.parametrize(
    ("slots", "says"), [(0, "greater than or equal to 1"), (3, "more than pool.task_slots_per_node 2")]
)
def test_required_slots_fit_a_node(tmp_path: Path, slots: int, says: str) -> None:
    message = refusal(tmp_path, {**PIPELINE, "required_slots": slots})
    assert "pipelines['report']" in message and says in message


def test_pipelines_on_one_pool_must_agree_on_it(tmp_path: Path) -> None:
    other = {**with_change("pool.vm_size", "standard_d4s_v3"), "name": "other", "match": {"prefix": "x/"}}
    first = {**PIPELINE, "match": {"prefix": "y/"}}
    message = refusal(tmp_path, first, other)
    assert "pipelines 'report' and 'other' both use pool 'pool-1' with different settings" in message


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"vm_size": "Standard D2"}, "pool.vm_size"),
        ({"image_publisher": "canonical"}, "go together"),
        ({"node_agent_sku": "x"}, "Extra inputs"),
    ],
)
def test_pool_fields(tmp_path: Path, change: dict[str, Any], says: str) -> None:
    message = refusal(tmp_path, {**PIPELINE, "pool": {**PIPELINE["pool"], **change}})  # type: ignore[dict-item]
    assert "pipelines['report'].pool" in message and says in message


def test_a_container_pipeline_gets_a_container_capable_image_unless_one_is_named(tmp_path: Path) -> None:
    plain = loads(tmp_path, PIPELINE).pool_plan("pool-1")
    boxed = loads(tmp_path, {**PIPELINE, "container": {"image": "python:3.12"}}).pool_plan("pool-1")
    assert plain.spec.image(bool(plain.containers))[:2] == ("canonical", "ubuntu-24_04-lts")
    assert boxed.spec.image(bool(boxed.containers)) == (
        "microsoft-dsvm",
        "ubuntu-hpc",
        "2204",
        "batch.node.ubuntu 22.04",
    )


def test_the_container_sample_loads() -> None:
    pipelines = load_pipelines(PROJECT / "samples" / "container" / "pipelines.json")
    pipeline = pipelines.pipelines[0]
    assert pipeline.container is not None and pipeline.container.registry is not None
    assert pipeline.pool.autoscale() is not None
