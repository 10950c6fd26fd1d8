"""The local Event Grid's journal: every event a subscription still owes, on disk, so a restart loses none.

An append-only JSON-lines file: `{"add": <subscription>, "published": <epoch s>, "event": {...}}` when an event
matches a subscription, `{"done": <subscription>, "ids": [...]}` once it is delivered or dead-lettered. Lines
are flushed to the OS before the write that raised them is answered (a crash of the process loses nothing;
a crash of the machine may lose the last lines: no fsync, which would cost a disk flush per upload). On start
the file is read back and rewritten with the events still owed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owed:
    subscription: str
    published: float
    event: dict[str, Any]


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def recover(self) -> list[Owed]:
        """The events still owed, in publication order; the file is rewritten to hold only them."""
        owed: dict[tuple[str, str], Owed] = {}
        if self.path.exists():
            for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
                try:
                    record = json.loads(line)
                    if "add" in record:
                        entry = Owed(str(record["add"]), float(record["published"]), dict(record["event"]))
                        owed[(entry.subscription, str(entry.event["id"]))] = entry
                    else:
                        for event_id in record["ids"]:
                            owed.pop((str(record["done"]), str(event_id)), None)
                except (ValueError, KeyError, TypeError):
                    # A line cut short by a crash: everything before it is intact.
                    logger.warning("%s line %d is not a journal record; skipped", self.path, number)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        with partial.open("w", encoding="utf-8") as rewritten:
            for entry in owed.values():
                rewritten.write(_add_line(entry))
        partial.replace(self.path)
        with self._lock:
            self._file = self.path.open("a", encoding="utf-8")
        return list(owed.values())

    def added(self, entries: Iterable[Owed]) -> None:
        self._write("".join(_add_line(entry) for entry in entries))

    def done(self, subscription: str, event_ids: Iterable[str]) -> None:
        self._write(json.dumps({"done": subscription, "ids": list(event_ids)}) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _write(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._file is None:
                raise RuntimeError("the journal is closed (recover() opens it)")
            self._file.write(text)
            self._file.flush()


def _add_line(entry: Owed) -> str:
    return json.dumps({"add": entry.subscription, "published": entry.published, "event": entry.event}) + "\n"
