import json
import re
from datetime import UTC, datetime

import pytest

from shared import ids
from shared.errors import ConfigError
from shared.pipelines import load_pipelines
from shared.settings import load_settings
from tests.unit.fakes import PIPELINE

HOSTILE = [
    "report final.txt",
    "données/été ☃.csv",
    "; rm -rf ~",
    "$(touch x)",
    "`id`",
    'it\'s "quoted"',
    "../../etc/passwd",
    "-rf",
    "a" * 1024,
]


@pytest.mark.parametrize("name", HOSTILE)
def test_task_ids_are_valid_batch_ids_for_hostile_names(name: str) -> None:
    task = ids.task_id("input", name, '"0x8DC"')
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task)
    local = ids.local_input_path(name)
    assert re.fullmatch(r"input/[A-Za-z0-9_][A-Za-z0-9._-]*", local), local


def test_task_id_is_deterministic_and_changes_with_the_etag() -> None:
    first = ids.task_id("input", "a.txt", '"0x1"')
    assert first == ids.task_id("input", "a.txt", "0x1")  # quoted and bare etags agree
    assert first != ids.task_id("input", "a.txt", "0x2")
    assert first != ids.task_id("input", "b/a.txt", "0x1")


def test_job_ids_group_by_pipeline_and_window() -> None:
    early = datetime(2026, 11, 24, 10, 1, tzinfo=UTC)
    late = datetime(2026, 11, 24, 10, 59, tzinfo=UTC)
    assert ids.job_id("report", early, 60) == ids.job_id("report", late, 60) == "report-20261124T1000Z-w60"
    assert ids.job_id("report", late, 30) != ids.job_id("report", early, 30)
    assert len(ids.job_id("p" * 40, early, 1440)) <= 64


def test_long_names_publish_under_a_digest_folder() -> None:
    long_name = "d/" + "x" * 1020
    prefix = ids.result_prefix(long_name)
    assert prefix.startswith("_long-names/") and len(prefix) < 60
    assert prefix != ids.result_prefix(long_name[:-1] + "y")


def test_result_prefix_never_climbs_out_of_its_folder() -> None:
    prefix = ids.result_prefix("../../etc/passwd")
    assert ".." not in prefix.split("/")
    assert ids.result_prefix("dir/a.txt") == "dir/a.txt/"


@pytest.mark.parametrize(
    "names",
    [
        ("a//b", "a/%/b", "a/%%/b"),
        ("a/./b", "a/%./b", "a/%%./b"),
        ("a/../b", "a/%../b", "a/%%../b"),
        ("%", "%%", "", "/"),
        ("_long-names/" + "0" * 40, "%_long-names/" + "0" * 40),
    ],
)
def test_different_input_names_never_share_a_results_folder(names: tuple[str, ...]) -> None:
    prefixes = [ids.result_prefix(name) for name in names]
    assert len(set(prefixes)) == len(names), prefixes


def test_no_input_takes_the_long_names_folder() -> None:
    long_name = "d/" + "x" * 1020
    digest_folder = ids.result_prefix(long_name)
    # An upload named after another input's digest folder gets a folder of its own.
    assert ids.result_prefix(digest_folder.rstrip("/")) == "%" + digest_folder
    assert ids.result_prefix("dir/%41.txt") == "dir/%%41.txt/"


def test_blob_name_checks_name_the_problem() -> None:
    assert ids.check_blob_name("ok.txt") is None
    assert "1025 characters" in (ids.check_blob_name("a" * 1025) or "")
    assert "control" in (ids.check_blob_name("a\nb") or "")


def write(tmp_path, document: object):  # type: ignore[no-untyped-def]
    path = tmp_path / "pipelines.json"
    path.write_text(json.dumps(document))
    return path


def test_pipelines_file_loads_and_builds_the_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pipelines = load_pipelines(write(tmp_path, {"pipelines": [PIPELINE]}))
    assert pipelines.pipelines[0].command_line("input/a.txt") == "python3 app/report/report.py input/a.txt out"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"command": "run {input} {blob_name}"}, "unknown placeholder(s) {blob_name}"),
        ({"match": {"glob": "[abc"}}, "invalid glob"),
        ({"name": "Bad Name"}, "['Bad Name'].name"),
        ({"pool": None}, "pool"),
        ({"app_files": ["../x"]}, "without '..'"),
    ],
)
def test_bad_pipelines_name_the_file_and_field(tmp_path, change, expected) -> None:  # type: ignore[no-untyped-def]
    spec = {**PIPELINE, **change}
    with pytest.raises(ConfigError) as raised:
        load_pipelines(write(tmp_path, {"pipelines": [spec]}))
    assert str(tmp_path / "pipelines.json") in str(raised.value)
    assert expected in str(raised.value)


def test_missing_field_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = {k: v for k, v in PIPELINE.items() if k != "command"}
    with pytest.raises(ConfigError, match=r"\['report'\]\.command: Field required"):
        load_pipelines(write(tmp_path, {"pipelines": [spec]}))


def test_duplicate_pipeline_names_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="repeated: report"):
        load_pipelines(write(tmp_path, {"pipelines": [PIPELINE, PIPELINE]}))


def test_missing_settings_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BATCHDROP_BATCH_URL", "BATCHDROP_PIPELINES_FILE", "BatchdropStorage"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "BATCHDROP_BATCH_URL" in message
    assert "BATCHDROP_PIPELINES_FILE" in message


def test_storage_setting_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BatchdropStorage", raising=False)
    monkeypatch.setenv("BATCHDROP_BATCH_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BATCHDROP_PIPELINES_FILE", "p.json")
    with pytest.raises(ConfigError, match="BatchdropStorage"):
        load_settings()


def test_window_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BatchdropStorage", "UseDevelopmentStorage=true")
    monkeypatch.setenv("BATCHDROP_BATCH_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("BATCHDROP_PIPELINES_FILE", "p.json")
    monkeypatch.setenv("BATCHDROP_JOB_WINDOW_MINUTES", "0")
    with pytest.raises(ConfigError, match="BATCHDROP_JOB_WINDOW_MINUTES"):
        load_settings()


def test_a_staging_container_names_the_ledger_partition_of_its_input() -> None:
    """The staging index row shares its input's partition (one transaction) only because both take the first
    hex digit of the same hash: this pins that coupling between shared/ids.py and shared/ledger_rows.py."""
    from shared.ledger_rows import input_partition, staging_index_partition

    for number in range(200):
        task = f"input-{number:04d}-{'x' * (number % 7)}"
        for prefix in ("staging", "st1234abcd", "a-b-c"):
            assert staging_index_partition(ids.staging_container(prefix, task)) == input_partition(task)
