#!/usr/bin/env python3
"""batchdrop's demo application: a report on one input file.

    python3 report.py INPUT OUTDIR

writes OUTDIR/report.json (bytes, lines, words and SHA-256 of INPUT) and OUTDIR/preview.txt (its
first 20 lines). INPUT is read once, in chunks, so its size does not matter.

It runs on a Batch node, so it needs nothing but the Python 3.8+ standard library.

Exit codes: 0 done; 1 INPUT cannot be read or OUTDIR cannot be written; 2 wrong arguments;
3 the input asked to fail (its first line is exactly `#fail`), so demos and tests can show a failed task.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
PREVIEW_LINES = 20
# A file without newlines would otherwise make its "first 20 lines" the whole file.
PREVIEW_MAX_BYTES = 64 * 1024
FAIL_MARKER = b"#fail"
EXIT_UNREADABLE = 1
EXIT_ASKED_TO_FAIL = 3
_WHITESPACE = frozenset(b" \t\n\r\x0b\x0c")


class Summary:
    """Counts over a byte stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.size = 0
        self.newlines = 0
        self.words = 0
        self._digest = hashlib.sha256()
        self._in_word = False
        self._last_byte = b""
        self._preview = bytearray()
        self._preview_done = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        self.newlines += chunk.count(b"\n")
        self._digest.update(chunk)
        self.words += len(chunk.split())
        # A word cut in two by the chunk boundary was counted twice.
        if self._in_word and chunk[0] not in _WHITESPACE:
            self.words -= 1
        self._in_word = chunk[-1] not in _WHITESPACE
        self._last_byte = chunk[-1:]
        if not self._preview_done:
            self._take_preview(chunk)

    def _take_preview(self, chunk: bytes) -> None:
        room = PREVIEW_MAX_BYTES - len(self._preview)
        self._preview += chunk[:room]
        cut = -1
        for _ in range(PREVIEW_LINES):
            cut = self._preview.find(b"\n", cut + 1)
            if cut < 0:
                break
        if cut >= 0:
            del self._preview[cut + 1 :]
            self._preview_done = True
        elif len(self._preview) >= PREVIEW_MAX_BYTES:
            self._preview_done = True

    @property
    def lines(self) -> int:
        """Lines as a reader counts them: a last line without a newline still counts."""
        unterminated = self.size > 0 and self._last_byte != b"\n"
        return self.newlines + (1 if unterminated else 0)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    @property
    def preview(self) -> str:
        return self._preview.decode("utf-8", errors="replace")

    def report(self) -> dict[str, object]:
        return {"bytes": self.size, "lines": self.lines, "words": self.words, "sha256": self.sha256}


def summarise(stream: BinaryIO, summary: Summary | None = None) -> Summary:
    """Read a stream to its end once and summarise it (continuing `summary` when given)."""
    summary = summary if summary is not None else Summary()
    while True:
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            return summary
        summary.feed(chunk)


def asks_to_fail(first_chunk: bytes) -> bool:
    """True when the first line is exactly `#fail` (with or without a CR LF or LF ending)."""
    first_line = first_chunk.split(b"\n", 1)[0]
    if first_line.endswith(b"\r"):
        first_line = first_line[:-1]
    return first_line == FAIL_MARKER


def run(input_path: str, output_dir: str) -> int:
    """Report on one file; the exit code (see the module docstring)."""
    try:
        with open(input_path, "rb") as stream:
            first = stream.read(CHUNK_BYTES)
            if asks_to_fail(first):
                print(
                    f"report.py: {input_path!r} starts with the line '#fail', so this task fails on purpose "
                    f"(exit {EXIT_ASKED_TO_FAIL})",
                    file=sys.stderr,
                )
                return EXIT_ASKED_TO_FAIL
            summary = Summary()
            summary.feed(first)
            summarise(stream, summary)
    except OSError as error:
        print(f"report.py: cannot read input {input_path!r}: {error.strerror or error}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        os.makedirs(output_dir, exist_ok=True)
        _write(os.path.join(output_dir, "report.json"), json.dumps(summary.report(), indent=2) + "\n")
        _write(os.path.join(output_dir, "preview.txt"), summary.preview)
    except OSError as error:
        print(f"report.py: cannot write to {output_dir!r}: {error.strerror or error}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(f"report.py: {summary.size} bytes, {summary.lines} lines, {summary.words} words, sha256 {summary.sha256}")
    return 0


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description="Write a JSON report and a preview of one file.")
    parser.add_argument("input", metavar="INPUT", help="the file to report on")
    parser.add_argument("output_dir", metavar="OUTDIR", help="where report.json and preview.txt go")
    arguments = parser.parse_args(argv)
    return run(arguments.input, arguments.output_dir)


if __name__ == "__main__":
    sys.exit(main())
