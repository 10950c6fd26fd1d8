"""`batchdrop package add|list` against a stack file, the csvstats sample and its package build, without servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from apps.csvstats.build import build
from local import cli
from local.cli.processes import identify
from shared.pipelines import load_pipelines, route

PROJECT = Path(__file__).resolve().parents[2]
CSVSTATS = PROJECT / "apps" / "csvstats" / "csvstats.py"


@pytest.fixture(autouse=True)
def own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    monkeypatch.setenv(cli.STATE_DIR_SETTING, str(state))
    return state


@pytest.fixture
def live_stack(tmp_path: Path) -> Path:
    """A stack file whose one recorded process is this test process, so commands take the stack as running."""
    packages = tmp_path / "stack" / "packages"
    info = cli.StackInfo(
        workdir=str(tmp_path / "stack"), storage_connection_string="", host_url="http://127.0.0.1:9",
        emulator_url="http://127.0.0.1:9", blob_url="http://127.0.0.1:9",
        processes={"batch-emulator": cli.ProcessInfo(os.getpid(), "", "", identify(os.getpid()))},
        packages_dir=str(packages),
    )  # fmt: skip
    info.save(cli.stack_file())
    return packages


def a_zip(path: Path, text: str = "echo hi\n") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tool.sh", text)
    return path


def test_package_commands_need_a_running_stack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["package", "add", "tool", "1.0", str(a_zip(tmp_path / "t.zip"))]) == 1
    assert "batchdrop up" in capsys.readouterr().err
    assert cli.main(["package", "list"]) == 1
    assert "batchdrop up" in capsys.readouterr().err


def test_package_add_then_list(live_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["package", "add", "tool", "1.0", str(a_zip(tmp_path / "one.zip"))]) == 0
    assert cli.main(["package", "add", "tool", "2.0", str(a_zip(tmp_path / "two.zip", "two")), "--default"]) == 0
    out = capsys.readouterr().out
    assert "added tool 1.0:" in out and "added tool 2.0 (the default version)" in out
    assert (live_stack / "tool" / "1.0.zip").is_file()

    assert cli.main(["package", "list"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["APPLICATION", "VERSION", "DEFAULT", "FORMAT", "BYTES"]
    assert rows[1][:3] == ["tool", "1.0", "zip"] and rows[2][:4] == ["tool", "2.0", "yes", "zip"]

    assert cli.main(["package", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["id"] == "tool" and listed[0]["defaultVersion"] == "2.0"
    assert [entry["version"] for entry in listed[0]["versions"]] == ["1.0", "2.0"]


def test_package_add_explains_what_is_wrong(
    live_stack: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = a_zip(tmp_path / "good.zip")
    (tmp_path / "notes.txt").write_text("plain text")
    cases = [
        (["bad/id", "1.0", str(good)], "application id 'bad/id' is invalid"),
        (["tool", ".1", str(good)], "version '.1' is invalid"),
        (["tool", "1.0", str(tmp_path / "notes.txt")], "is not a zip file"),
        (["tool", "1.0", str(tmp_path / "missing.zip")], "is not a file"),
    ]
    for arguments, message in cases:
        assert cli.main(["package", "add", *arguments]) == 1
        assert message in capsys.readouterr().err
    assert cli.main(["package", "add", "tool", "1.0", str(good)]) == 0
    assert cli.main(["package", "add", "tool", "1.0", str(a_zip(tmp_path / "other.zip", "other"))]) == 1
    assert "already exists with other contents" in capsys.readouterr().err
    assert cli.main(["package", "list"]) == 0
    assert "no application packages" not in capsys.readouterr().out


def test_package_list_of_an_empty_account_says_how_to_add(live_stack: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["package", "list"]) == 0
    assert "batchdrop package add" in capsys.readouterr().out


def test_demo_drops_the_csv_samples_under_their_prefix() -> None:
    inputs = dict((name, path) for path, name in cli.sample_inputs(PROJECT / "samples"))

    assert {"csv/weather.csv", "csv/sales.csv"} <= set(inputs)
    assert "hello.txt" in inputs and "pipelines.json" not in inputs
    assert all(cli.expected_status(inputs[name]) == "succeeded" for name in inputs if name.startswith("csv/"))


def test_the_sample_pipelines_route_csv_inputs_to_the_package_pipeline() -> None:
    pipelines = load_pipelines(PROJECT / "samples" / "pipelines.json")
    csvstats = pipelines.by_name("csvstats")

    assert csvstats is not None and csvstats.match.prefix == "csv/"
    assert [(package.id, package.version) for package in csvstats.application_packages] == [("csvstats", "1.0")]
    assert "csvstats.py" in csvstats.command
    routed = {name: route(pipelines, name) for name in ("csv/weather.csv", "cities.csv", "hello.txt")}
    assert {name: p.name if p else None for name, p in routed.items()} == {
        "csv/weather.csv": "csvstats",
        "cities.csv": "report",  # the longer prefix wins; the rest goes to the catch-all
        "hello.txt": "report",
    }


def test_the_package_build_is_repeatable_and_carries_its_dependency(tmp_path: Path) -> None:
    first = build(tmp_path / "a.zip").read_bytes()
    second = build(tmp_path / "b.zip").read_bytes()

    assert first == second
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert sorted(archive.namelist()) == ["csvstats.py", "lib/colstats.py"]


def test_csvstats_from_the_unpacked_zip_uses_only_the_vendored_module(tmp_path: Path) -> None:
    with zipfile.ZipFile(build(tmp_path / "p.zip")) as archive:
        archive.extractall(tmp_path / "unpacked")
    source = tmp_path / "in.csv"
    source.write_text("name,score,weight\na,1,2.5\nb,3,\nc,x5,1.5\n")

    done = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "unpacked" / "csvstats.py"), str(source), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rows"] == 3
    assert stats["columns"] == {"weight": {"count": 2, "mean": 2.0, "min": 1.5, "max": 2.5}}
    assert stats["text_columns"] == ["name", "score"]


@pytest.mark.parametrize(("content", "code", "message"), [(None, 1, "cannot read"), ("", 2, "no header row")])
def test_csvstats_exit_codes(tmp_path: Path, content: str | None, code: int, message: str) -> None:
    source = tmp_path / "in.csv"
    if content is not None:
        source.write_text(content)

    done = subprocess.run(
        [sys.executable, str(CSVSTATS), str(source), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert done.returncode == code and message in done.stderr
