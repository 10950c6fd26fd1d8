"""Persistence of the emulator's state: an append-only journal of documents, compacted at start."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

Key = tuple[str, str]


class Journal:
    """Each change appends one JSON line (put or delete of a document); load() replays them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self.writes_since_compaction = 0

    def load(self) -> dict[Key, dict[str, Any]]:
        documents: dict[Key, dict[str, Any]] = {}
        if self.path is None or not self.path.exists():
            return documents
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
                    documents[key] = entry["doc"]
                else:
                    documents.pop(key, None)
        return documents

    def open(self, documents: dict[Key, dict[str, Any]]) -> None:
        """Rewrite the journal as a snapshot of `documents`, then append to it."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".compact")
        with temporary.open("w", encoding="utf-8") as target:
            for (kind, key), doc in documents.items():
                target.write(json.dumps({"op": "put", "kind": kind, "key": key, "doc": doc}) + "\n")
        with self._lock:
            os.replace(temporary, self.path)
            if self._file is not None:
                self._file.close()
            self._file = self.path.open("a", encoding="utf-8")
            self.writes_since_compaction = 0

    def put(self, kind: str, key: str, doc: dict[str, Any]) -> None:
        self._write({"op": "put", "kind": kind, "key": key, "doc": doc})

    def delete(self, kind: str, key: str) -> None:
        self._write({"op": "del", "kind": kind, "key": key})

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(entry) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            self.writes_since_compaction += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
