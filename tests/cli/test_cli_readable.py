"""The CLI stays readable: tables fit the terminal, --wide and --json, status --watch --until-idle, rerun's body."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rich.cells import cell_len

from local import cli
from local.cli.errors import CliError
from local.cli.rerun import render_rerun, request_body, since_time
from local.cli.results import is_current_manifest
from local.cli.tables import ELLIPSIS, shorten_middle, table

LONG = "deep/" + "n" * 300 + "-middle-" + "e" * 379 + "-end.csv"  # 700 characters
assert len(LONG) == 700


def result(name: str, status: str = "succeeded") -> cli.Result:
    outputs = [f"{name}/report.json", f"{name}/nested/upper.txt"]
    manifest = {"input": name, "status": status, "exit_code": 0, "outputs": outputs}
    return cli.Result(f"{name}/_manifest.json", manifest)


@pytest.mark.parametrize("width", [60, 100, 200])
def test_a_700_character_name_does_not_widen_rows_beyond_the_terminal(width: int) -> None:
    lines = cli.render_results([result(LONG), result("short.txt", "failed")], width=width)
    assert all(cell_len(line) <= width for line in lines), [cell_len(line) for line in lines]
    row = next(line for line in lines if line.startswith("deep/"))
    assert ELLIPSIS in row and "-end.csv" in row  # shortened in the middle: start and end still there
    assert next(line for line in lines if line.startswith("short.txt")).split()[:3] == ["short.txt", "failed", "0"]


def test_wide_prints_the_name_whole() -> None:
    lines = cli.render_results([result(LONG)], width=None)
    assert any(line.startswith(LONG + " ") for line in lines)
    assert not any(ELLIPSIS in line for line in lines)


def test_status_lines_fit_too_rejections_included() -> None:
    document = {
        "pipelines": [{"name": "report", "prefix": "", "glob": "*"}],
        "jobs": [{"job_id": "report-" + "x" * 200, "pipeline": "report", "state": "active", "counts": {"queued": 2}}],
        "totals": {"queued": 2},
        "rejected": [{"input": "input/" + LONG, "reason": "the blob name is too long", "at": "2026-12-01"}],
    }
    lines = cli.render_status(document, width=80)
    assert all(cell_len(line) <= 80 for line in lines), [cell_len(line) for line in lines]
    assert cli.render_status(document, width=None)[-1].startswith("  input/" + LONG)


def test_shortening_counts_terminal_cells_of_wide_characters() -> None:
    name = "☃" * 10 + "漢字" * 20
    short = shorten_middle(name, 21)
    assert cell_len(short) <= 21 and short.startswith("☃") and short.endswith("字")
    assert table(["A"], [[name]], width=15)[1].endswith("字")


def test_history_manifests_are_not_listed_as_results() -> None:
    assert is_current_manifest("a.txt/_manifest.json")
    assert is_current_manifest("dir/%_history/_manifest.json")  # an input named dir/_history
    assert not is_current_manifest("a.txt/_history/1/_manifest.json")


class StatusServer:
    """A status API on 127.0.0.1 that answers with each document in turn (the last one from then on)."""

    def __init__(self, documents: list[dict[str, Any]]) -> None:
        self.documents = documents
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                document = owner.documents[min(owner.requests, len(owner.documents) - 1)]
                owner.requests += 1
                body = json.dumps(document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def job_document(queued: int, running: int, done: int, collected: int) -> dict[str, Any]:
    counts = {"queued": queued, "running": running, "succeeded": done, "failed": 0, "collected": collected}
    return {"jobs": [{"job_id": "report-20261201T0300Z-w60", "pipeline": "report", "state": "active",
                      "counts": counts}], "totals": counts}  # fmt: skip


@pytest.fixture
def draining() -> Iterator[StatusServer]:
    server = StatusServer([job_document(3, 1, 0, 0), job_document(1, 1, 2, 1), job_document(0, 0, 4, 3),
                           job_document(0, 0, 4, 4)])  # fmt: skip
    yield server
    server.stop()


@pytest.mark.timeout(60)
def test_watch_until_idle_exits_once_nothing_is_queued_or_running_and_every_manifest_is_out(
    draining: StatusServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["status", "--url", draining.url, "--watch", "--until-idle", "--interval", "0.01"])
    assert code == 0
    assert draining.requests == 4  # not before the last manifest: 0 queued, 0 running but 3 of 4 out is not idle
    out = capsys.readouterr().out
    assert "manifests" in out and "4/4" in out


def test_status_json_parses(draining: StatusServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--url", draining.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["queued"] == 3


def test_until_idle_without_watch_is_an_error(draining: StatusServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--url", draining.url, "--until-idle"]) == 1
    assert "--until-idle goes with --watch" in capsys.readouterr().err


def rerun_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["rerun", *argv])


def test_rerun_builds_one_request_whose_id_is_kept_for_retries() -> None:
    body = request_body(rerun_args("a.txt", "b.txt", "--force"))
    assert body["names"] == ["a.txt", "b.txt"] and body["force"] is True and len(body["id"]) == 32
    assert request_body(rerun_args("--failed", "--since", "2h", "--pipeline", "p", "--id", "mine"))["id"] == "mine"
    assert request_body(rerun_args("--pipeline", "p", "--all"))["all"] is True
    for wrong, message in [((), "exactly one"), (("--all",), "--pipeline"), (("a", "--since", "1d"), "--failed")]:
        with pytest.raises(CliError, match=message):
            request_body(rerun_args(*wrong))
    assert since_time("2026-12-01T03:00") == "2026-12-01T03:00:00+00:00"


def test_rerun_table_fits_and_says_what_happened() -> None:
    answer = {"id": "r1", "submitted": 1, "duplicate": 0, "refused": 1, "outcomes": [
        {"name": LONG, "action": "submitted", "run": 2, "task_id": "end-csv-r-0123", "reason": ""},
        {"name": "gone.txt", "action": "refused", "run": 0, "reason": "the input no longer exists"},
    ]}  # fmt: skip
    lines = render_rerun(answer, width=90)
    assert all(cell_len(line) <= 90 for line in lines)
    assert "the input no longer exists" in lines[2]
    assert lines[-1] == "re-run r1: 1 submitted, 0 already re-run by this request, 1 refused"
