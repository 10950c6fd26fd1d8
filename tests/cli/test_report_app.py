"""The demo application (apps/report/report.py), run as Batch runs it: a subprocess with two arguments."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPORT = Path(__file__).resolve().parents[2] / "apps" / "report" / "report.py"


def run_report(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPORT), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def report_of(outdir: Path) -> dict[str, object]:
    return json.loads((outdir / "report.json").read_text())


def test_report_counts_bytes_lines_words_and_hash(tmp_path: Path) -> None:
    data = b"hello world\n  two  words \n\nlast line without newline"
    source = tmp_path / "in.txt"
    source.write_bytes(data)

    result = run_report(source, tmp_path / "out")

    assert result.returncode == 0, result.stderr
    assert report_of(tmp_path / "out") == {
        "bytes": len(data),
        "lines": 4,
        "words": 8,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def test_empty_input_has_zero_everything(tmp_path: Path) -> None:
    source = tmp_path / "empty"
    source.write_bytes(b"")

    result = run_report(source, tmp_path / "out")

    assert result.returncode == 0, result.stderr
    assert report_of(tmp_path / "out") == {"bytes": 0, "lines": 0, "words": 0, "sha256": hashlib.sha256().hexdigest()}
    assert (tmp_path / "out" / "preview.txt").read_text() == ""


def test_preview_is_the_first_20_lines_with_bad_bytes_replaced(tmp_path: Path) -> None:
    lines = [f"line {n}\n".encode() for n in range(1, 31)]
    lines[0] = b"caf\xe9 \xff\n"
    source = tmp_path / "in.log"
    source.write_bytes(b"".join(lines))

    assert run_report(source, tmp_path / "out").returncode == 0

    preview = (tmp_path / "out" / "preview.txt").read_text(encoding="utf-8")
    assert preview.splitlines() == ["caf\ufffd \ufffd"] + [f"line {n}" for n in range(2, 21)]


def test_counts_are_the_same_across_chunk_boundaries(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPORT.parent))
    try:
        import report  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    data = b"alpha beta\tgamma\r\ndelta  epsilon\n\nzeta" * 50
    whole = report.Summary()
    whole.feed(data)
    for size in (1, 2, 3, 7, 64):
        pieces = report.Summary()
        for start in range(0, len(data), size):
            pieces.feed(data[start : start + size])
        assert pieces.report() == whole.report(), size
        assert pieces.preview == whole.preview, size
    assert whole.report()["words"] == len(data.split())


def test_large_input_is_streamed(tmp_path: Path) -> None:
    # 12 MiB, several chunks; the point is that it completes with bounded memory and correct counts.
    line = b"0123456789 abcdefghij\n"
    copies = (12 << 20) // len(line)
    source = tmp_path / "big.txt"
    with source.open("wb") as handle:
        for _ in range(copies // 1000):
            handle.write(line * 1000)

    result = run_report(source, tmp_path / "out")

    assert result.returncode == 0, result.stderr
    report = report_of(tmp_path / "out")
    expected_lines = (copies // 1000) * 1000
    assert report["lines"] == expected_lines
    assert report["words"] == 2 * expected_lines
    assert len((tmp_path / "out" / "preview.txt").read_text().splitlines()) == 20


@pytest.mark.parametrize("content", [b"#fail\nmore text\n", b"#fail\r\nmore text\r\n", b"#fail"])
def test_fail_marker_exits_3_with_a_message_and_no_outputs(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "bad.txt"
    source.write_bytes(content)

    result = run_report(source, tmp_path / "out")

    assert result.returncode == 3
    assert "#fail" in result.stderr
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize("first_line", [b"#failure\n", b" #fail\n", b"text\n#fail\n"])
def test_only_an_exact_first_line_fails(tmp_path: Path, first_line: bytes) -> None:
    source = tmp_path / "ok.txt"
    source.write_bytes(first_line)

    assert run_report(source, tmp_path / "out").returncode == 0


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    result = run_report(tmp_path / "nope.txt", tmp_path / "out")

    assert result.returncode == 1
    assert "cannot read input" in result.stderr and "nope.txt" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_as_input_is_a_clear_error(tmp_path: Path) -> None:
    result = run_report(tmp_path, tmp_path / "out")

    assert result.returncode == 1
    assert "cannot read input" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_arguments_print_usage(tmp_path: Path) -> None:
    result = run_report(tmp_path / "only-one")

    assert result.returncode == 2
    assert "usage: report.py" in result.stderr and "OUTDIR" in result.stderr


def test_sample_inputs_give_the_outcome_the_demo_expects() -> None:
    samples = Path(__file__).resolve().parents[2] / "samples"
    inputs = sorted(p for p in samples.iterdir() if p.is_file() and p.name != "pipelines.json")
    assert len(inputs) >= 3
    failing = [p.name for p in inputs if p.read_bytes().splitlines()[:1] == [b"#fail"]]
    assert failing == ["fail-on-purpose.txt"]
