"""The `batchdrop` command without servers: argument errors, tables, the state file, result downloads."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from local import cli

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(cli.STATE_DIR_SETTING, str(state))
    return state


def test_commands_without_a_stack_say_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["status"], ["results"], ["drop", str(PROJECT / "samples" / "hello.txt")]):
        assert cli.main(command) == 1
        assert "batchdrop up" in capsys.readouterr().err


def test_down_with_nothing_running_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["down"]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_drop_as_names_exactly_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("a")
    second.write_text("b")

    assert cli.main(["drop", str(first), str(second), "--as", "x.txt"]) == 1
    assert "--as NAME names one file" in capsys.readouterr().err


def test_drop_of_a_missing_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["drop", str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv: no such file" in capsys.readouterr().err


def test_stack_file_is_private_and_round_trips(own_state_dir: Path) -> None:
    info = cli.StackInfo(
        workdir="/w", storage_connection_string="AccountKey=secret", host_url="http://127.0.0.1:1",
        emulator_url="http://127.0.0.1:2", blob_url="http://127.0.0.1:3/devstoreaccount1",
        processes={"azurite": cli.ProcessInfo(123, "http://127.0.0.1:3", "/w/logs/azurite.log")}, supervisor_pid=7,
    )  # fmt: skip

    info.save(cli.stack_file())

    assert stat.S_IMODE(cli.stack_file().stat().st_mode) == 0o600
    assert cli.StackInfo.load(cli.stack_file()) == info


def test_a_corrupt_stack_file_is_reported_not_a_traceback(
    own_state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own_state_dir.mkdir(parents=True)
    cli.stack_file().write_text("{not json")

    assert cli.main(["status"]) == 1
    assert "unreadable" in capsys.readouterr().err


def test_a_stack_file_of_dead_processes_counts_as_not_running(own_state_dir: Path) -> None:
    info = cli.StackInfo("/w", "cs", "http://h", "http://e", "http://b",
                         {"dev-host": cli.ProcessInfo(2**22 + 12345, "http://h", "/w/h.log")})  # fmt: skip
    info.save(cli.stack_file())

    with pytest.raises(cli.CliError, match="no local stack is running"):
        cli.require_stack()


STATUS = {
    "pipelines": [{"name": "report", "prefix": "", "glob": "*"}],
    "totals": {"queued": 1, "running": 2, "succeeded": 3, "failed": 1, "collected": 4, "rejected": 1, "skipped": 0},
    "jobs": [
        {
            "job_id": "report-20261124T1000Z-w60",
            "pipeline": "report",
            "state": "active",
            "counts": {"queued": 1, "running": 2, "succeeded": 3, "failed": 1, "collected": 4},
        }
    ],
    "rejected": [{"input": "input/bad\u0001name", "reason": "control characters", "at": "2026-11-24T10:00:00Z"}],
    "poison": {"completions-poison": 2},
}


def test_status_table_shows_each_job_totals_rejections_and_poison() -> None:
    text = "\n".join(cli.render_status(STATUS))

    assert "report (prefix '', glob '*')" in text
    job_line = next(line for line in text.splitlines() if line.startswith("report-20261124T1000Z-w60"))
    assert job_line.split()[1:] == ["report", "active", "1", "2", "3", "1", "4"]
    total_line = next(line for line in text.splitlines() if line.startswith("TOTAL"))
    assert total_line.split()[1:] == ["1", "2", "3", "1", "4"]
    assert "rejected 1, skipped 0, poison: completions-poison 2" in text
    assert "control characters" in text


def test_status_table_survives_an_empty_document() -> None:
    assert cli.render_status({})[0] == "pipelines: none"


def manifest(name: str, status: str, exit_code: int | None, outputs: list[str]) -> dict[str, Any]:
    prefix = f"{name}/"
    return {
        "input": name,
        "status": status,
        "exit_code": exit_code,
        "outputs": [prefix + output for output in outputs],
        "stdout": f"{prefix}_logs/stdout.txt",
        "stderr": f"{prefix}_logs/stderr.txt",
    }


def test_results_table_shows_outputs_relative_to_the_input_and_checks_expectations() -> None:
    results = [
        cli.Result("hello.txt/_manifest.json", manifest("hello.txt", "succeeded", 0, ["preview.txt", "report.json"])),
        cli.Result("bad.txt/_manifest.json", manifest("bad.txt", "failed", 3, [])),
    ]

    lines = cli.render_results(results, {"hello.txt": "succeeded", "bad.txt": "succeeded"})

    assert lines[0].split() == ["INPUT", "STATUS", "EXIT", "OUTPUTS", "CHECK"]
    assert lines[1].split() == ["hello.txt", "succeeded", "0", "preview.txt,", "report.json", "ok"]
    assert lines[2].split()[:4] == ["bad.txt", "failed", "3", "-"]
    assert "UNEXPECTED (wanted succeeded)" in lines[2]


class FakeDownload:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def readall(self) -> bytes:
        return self._data


class FakeContainer:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    def download_blob(self, name: str) -> FakeDownload:
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.blobs:
            raise ResourceNotFoundError(name)
        return FakeDownload(self.blobs[name])


class FakeService:
    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.container = FakeContainer(blobs)

    def get_container_client(self, name: str) -> FakeContainer:
        assert name == "results"
        return self.container


def test_download_copies_what_the_manifest_lists_and_nothing_outside_the_target(tmp_path: Path) -> None:
    good = manifest("dir/a b.txt", "succeeded", 0, ["report.json"])
    hostile = manifest("x", "succeeded", 0, [])
    hostile["outputs"] = ["../../escaped.txt"]
    blobs = {
        "dir/a b.txt/report.json": b"{}",
        "dir/a b.txt/_logs/stdout.txt": b"out",
        "dir/a b.txt/_logs/stderr.txt": b"",
        "dir/a b.txt/_manifest.json": json.dumps(good).encode(),
        "../../escaped.txt": b"no",
        "x/_manifest.json": b"{}",
    }
    results = [cli.Result("dir/a b.txt/_manifest.json", good), cli.Result("x/_manifest.json", hostile)]
    target = tmp_path / "download"

    count = cli.download_results(FakeService(blobs), results, target)  # type: ignore[arg-type]

    assert (target / "dir" / "a b.txt" / "report.json").read_bytes() == b"{}"
    assert (target / "dir" / "a b.txt" / "_manifest.json").exists()
    assert not (tmp_path / "escaped.txt").exists()
    assert count == 5


def test_demo_expects_the_fail_sample_to_fail_and_the_rest_to_succeed() -> None:
    samples = cli.sample_files(PROJECT / "samples")

    expected = {path.name: cli.expected_status(path) for path in samples}

    assert "pipelines.json" not in expected
    assert expected.pop("fail-on-purpose.txt") == "failed"
    assert len(expected) >= 3
    assert set(expected.values()) == {"succeeded"}


def test_app_files_keep_relative_paths_and_skip_caches(tmp_path: Path) -> None:
    (tmp_path / "report" / "__pycache__").mkdir(parents=True)
    (tmp_path / "report" / "report.py").write_text("")
    (tmp_path / "report" / "__pycache__" / "report.cpython-311.pyc").write_bytes(b"")
    (tmp_path / ".hidden").write_text("")

    assert [name for name, _ in cli.app_files(tmp_path)] == ["report/report.py"]


def test_the_project_apps_include_the_demo_application() -> None:
    names = [name for name, _ in cli.app_files(PROJECT / "apps")]
    pipelines = json.loads((PROJECT / "samples" / "pipelines.json").read_text())

    for pipeline in pipelines["pipelines"]:
        assert set(pipeline["app_files"]) <= set(names)


def test_open_prints_the_page_url_when_there_is_no_browser(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or False)  # a machine with no browser
    monkeypatch.setenv("BATCHDROP_FUNCTION_KEY", "secret-key")
    assert cli.main(["open", "--url", "https://fn.example/"]) == 0
    assert opened == ["https://fn.example/api/page?code=secret-key"]  # the browser gets the key in its address
    out = capsys.readouterr().out
    assert out == "status page: https://fn.example/api/page?code=$BATCHDROP_FUNCTION_KEY\n"  # the terminal does not
    assert cli.main(["open", "--url", "https://fn.example", "--print"]) == 0
    assert opened == ["https://fn.example/api/page?code=secret-key"]  # --print opens nothing
    assert cli.main(["open"]) == 1
    assert "batchdrop up" in capsys.readouterr().err  # no local stack: says how to start one


def test_up_describes_the_status_page_url() -> None:
    from local.cli.lifecycle import describe_stack
    from local.cli.state import StackInfo

    info = StackInfo(workdir="/tmp/x", storage_connection_string="", host_url="http://127.0.0.1:7071",
                     emulator_url="", blob_url="", processes={}, started_at="")  # fmt: skip
    assert any("http://127.0.0.1:7071/api/page" in line for line in describe_stack(info))
