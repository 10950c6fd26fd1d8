"""Disk work that must not hold the service's lock: removing task and job directories, compacting the journal."""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

RemoveTree = Callable[[Path], None]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class Housekeeper:
    """One background thread that runs disk chores in the order they were handed in."""

    def __init__(self, trash_dir: Path, remover: RemoveTree = remove_tree) -> None:
        self.trash_dir = trash_dir
        self._remover = remover
        self._chores: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="batch-housekeeping", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # Trees a previous run moved aside but did not get to delete.
        if self.trash_dir.is_dir():
            for leftover in self.trash_dir.iterdir():
                self._remove_later(leftover)

    def stop(self) -> None:
        """Ask the thread to end after the chores handed in so far (it does not wait for them)."""
        self._chores.put(None)

    def submit(self, chore: Callable[[], None]) -> None:
        self._chores.put(chore)

    def discard(self, paths: Iterable[Path]) -> None:
        """Delete these trees later; each is first renamed into the trash, so its path is free for reuse at once.

        The rename is one metadata operation on the same file system (the trash is inside the state
        directory, as every node directory is), so it is safe under the service lock where a
        recursive delete is not; a new attempt of a task can recreate the path right after it.
        """
        for path in paths:
            target = self.trash_dir / uuid.uuid4().hex
            try:
                self.trash_dir.mkdir(parents=True, exist_ok=True)
                path.rename(target)
            except FileNotFoundError:
                continue
            except OSError as problem:
                logger.warning("could not move %s aside (%s); removing it in place", path, problem)
                target = path
            self._remove_later(target)

    def _remove_later(self, path: Path) -> None:
        self.submit(functools.partial(self._remover, path))

    def _run(self) -> None:
        while True:
            chore = self._chores.get()
            if chore is None:
                return
            try:
                chore()
            except Exception:  # the housekeeping thread outlives one failed chore; it is logged once here
                logger.exception("emulator housekeeping chore failed")
