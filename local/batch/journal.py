"""Persistence of the emulator's state: an append-only journal of documents, compacted now and then.

Each line puts or deletes one entity: its REST document and, beside it, the emulator's record of it
(`meta`). The journal keeps the latest line of every live entity in memory, so a compaction copies
a list of strings under its own lock and writes the file with no lock held: the service is never
made to wait for the disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass
class Entry:
    doc: dict[str, Any]
    # None for lines written before records existed (their bookkeeping is inside the document)
    meta: dict[str, Any] | None


def _put_line(kind: str, key: str, doc: dict[str, Any], meta: dict[str, Any] | None) -> str:
    return json.dumps({"op": "put", "kind": kind, "key": key, "doc": doc, "meta": meta}) + "\n"


class Journal:
    """Each change appends one JSON line (put or delete of an entity); load() replays them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._latest: dict[Key, str] = {}  # the line that put each live entity last
        self._pending: list[str] | None = None  # lines appended while a compaction is being written
        self.writes_since_compaction = 0

    def load(self) -> dict[Key, Entry]:
        entries: dict[Key, Entry] = {}
        if self.path is None or not self.path.exists():
            return entries
        with self.path.open(encoding="utf-8") as source:
            for number, line in enumerate(source, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    # A crash can cut the last line short; everything before it is intact.
                    logger.warning("journal %s: skipping unreadable line %d", self.path, number)
                    continue
                key = (str(entry["kind"]), str(entry["key"]))
                if entry["op"] == "put":
                    entries[key] = Entry(entry["doc"], entry.get("meta"))
                else:
                    entries.pop(key, None)
        return entries

    def open(self, entries: Mapping[Key, Entry]) -> None:
        """Rewrite the journal as a snapshot of `entries`, then append to it (at start, before any other use)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        latest = {key: _put_line(key[0], key[1], entry.doc, entry.meta) for key, entry in entries.items()}
        temporary = self.path.with_suffix(".compact")
        with temporary.open("w", encoding="utf-8") as target:
            target.writelines(latest.values())
        with self._lock:
            os.replace(temporary, self.path)
            if self._file is not None:
                self._file.close()
            self._file = self.path.open("a", encoding="utf-8")
            self._latest = latest
            self.writes_since_compaction = 0

    def put(self, kind: str, key: str, doc: dict[str, Any], meta: dict[str, Any]) -> None:
        self._write((kind, key), _put_line(kind, key, doc, meta))

    def delete(self, kind: str, key: str) -> None:
        self._write((kind, key), None)

    def _write(self, key: Key, put_line: str | None) -> None:
        if self._file is None:
            return
        line = put_line or json.dumps({"op": "del", "kind": key[0], "key": key[1]}) + "\n"
        with self._lock:
            if self._file is None:
                return
            self._file.write(line)
            self._file.flush()
            self.writes_since_compaction += 1
            if put_line is None:
                self._latest.pop(key, None)
            else:
                self._latest[key] = put_line
            if self._pending is not None:
                self._pending.append(line)

    def compact(self) -> None:
        """Rewrite the file as one line per live entity. Safe to run beside writers, on any thread.

        The snapshot and the lines appended after it are taken under the journal's lock at the same
        instant, so the new file holds every write in order; until it replaces the old one, the old
        one stays complete, so a crash at any point loses nothing.
        """
        with self._lock:
            if self.path is None or self._file is None or self._pending is not None:
                return
            snapshot = list(self._latest.values())
            self._pending = []
            self.writes_since_compaction = 0
        temporary = self.path.with_suffix(".compact")
        try:
            self._write_snapshot(temporary, snapshot)
            with self._lock:
                if self._file is None:  # closed meanwhile: the old file is the journal
                    temporary.unlink(missing_ok=True)
                    return
                with temporary.open("a", encoding="utf-8") as target:
                    target.writelines(self._pending or [])
                os.replace(temporary, self.path)
                self._file.close()
                self._file = self.path.open("a", encoding="utf-8")
        finally:
            with self._lock:
                self._pending = None

    def _write_snapshot(self, temporary: Path, lines: list[str]) -> None:
        """The slow part of a compaction, run with no lock held."""
        with temporary.open("w", encoding="utf-8") as target:
            target.writelines(lines)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
