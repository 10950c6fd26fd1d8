"""The status page: the recent-inputs listing it reads (GET api/recent), and the page itself (GET api/page).

The page is a static document with vanilla JavaScript that reads `api/status` and `api/recent` and renders them
with DOM text nodes only (never innerHTML), so an input named `<script>…` is shown as text. It is served with a
Content-Security-Policy that allows only its own inline script and style (by a nonce made per response): even a
name that slipped into markup could not run. The page holds no key: it takes the function key from its own
address (`?code=`) and sends it in the `x-functions-key` header of its requests.

Cost of one listing page (docs/status-page.md has the measured figures): at most MAX_INDEX_READS range reads of
the recent-inputs index, one point read per input still pending on the page, one manifest read per collected
input on the page, and no Batch request; it does not grow with the inputs ever processed.
"""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared import ids
from shared.gateways import Gateways
from shared.models import InputState
from shared.ports import FINAL_STATES
from shared.recent import RecentEntry
from shared.redact import redact, redact_value

DEFAULT_LIMIT = 20
MAX_LIMIT = 50
INDEX_PAGE = 100  # index rows per range read
MAX_INDEX_READS = 3  # per listing page: a filter that matches little shows what it found and a cursor to go on
STDERR_LINES = 20
READ_THREADS = 8
RESULT_LINK_SECONDS = 300  # an output link is followed at once; a user who comes back asks the page again
STATES = ("queued", "succeeded", "failed", "superseded", "rejected", "skipped")
PAGE_DIR = Path(__file__).resolve().parent / "page"


class BadQuery(ValueError):
    """A listing parameter out of range: the message names it."""


@dataclass(frozen=True)
class RecentQuery:
    """What one listing page asks for: its size, the cursor of the previous page, and the filters."""

    limit: int = DEFAULT_LIMIT
    after: str | None = None
    prefix: str = ""
    state: str = ""

    @classmethod
    def parse(cls, params: dict[str, str]) -> RecentQuery:
        try:
            limit = int(params.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        state = params.get("state") or ""
        if state and state not in STATES:
            raise BadQuery(f"state must be one of {', '.join(STATES)}")
        after = params.get("after") or None
        if after is not None and (len(after) > 200 or not after[:13].isdigit()):
            raise BadQuery("after must be the `next` cursor of a previous page")
        prefix = params.get("prefix") or ""
        if len(prefix) > ids.MAX_BLOB_NAME:
            raise BadQuery(f"prefix is longer than {ids.MAX_BLOB_NAME} characters")
        return cls(limit, after, prefix, state)


def shown_state(entry: RecentEntry) -> str:
    """The state the page shows for an event: pending inputs are `queued`, collected ones their outcome."""
    if entry.state == InputState.COLLECTED.value:
        return entry.outcome or "succeeded"
    if entry.state in (InputState.REJECTED.value, InputState.SKIPPED.value, InputState.GROUPED.value):
        return entry.state  # grouped: a member recorded in its group, whose task carries it (shared/groups.py)
    return "queued"


def recent_inputs(gw: Gateways, query: RecentQuery) -> dict[str, object]:
    """One page of the most recent inputs, newest first, each with its outcome from its manifest."""
    final = {state.value for state in FINAL_STATES}
    picked: list[RecentEntry] = []
    seen: set[str] = set()
    cursor = query.after
    exhausted = False
    reads = 0
    while len(picked) < query.limit and reads < MAX_INDEX_READS:
        events, next_cursor = gw.ledger.recent(INDEX_PAGE, cursor)
        reads += 1
        exhausted = next_cursor is None
        for position, event in enumerate(events):
            cursor = event.key
            if event.task_id in seen:
                continue  # an older event of an input already listed (its claim, once it was collected)
            if event.state in final:
                seen.add(event.task_id)
            if not event.name.startswith(query.prefix):
                continue
            if query.state and event.state in final and shown_state(event) != query.state:
                continue
            if query.state and query.state != "queued" and event.state not in final:
                continue
            picked.append(event)
            if len(picked) >= query.limit:
                exhausted = exhausted and position == len(events) - 1
                break
        if exhausted:
            break
    # A pending event whose input has become final since: its final event is newer, listed above it.
    still_pending = _still_pending(gw, [event for event in picked if event.state not in final])
    picked = [event for event in picked if event.state in final or event.task_id in still_pending]
    with ThreadPoolExecutor(READ_THREADS) as pool:
        inputs = list(pool.map(lambda event: _describe(gw, event), picked))
    return {
        "inputs": inputs,
        "next": None if exhausted else cursor,
        "index_reads": reads,
    }


def _still_pending(gw: Gateways, events: list[RecentEntry]) -> set[str]:
    """Task ids of the events whose input is still not final (one point read each, in parallel)."""
    if not events:
        return set()
    with ThreadPoolExecutor(READ_THREADS) as pool:
        rows = list(pool.map(lambda event: gw.ledger.get_input(event.task_id), events))
    return {
        event.task_id for event, row in zip(events, rows, strict=True) if row is None or row.state not in FINAL_STATES
    }


def _describe(gw: Gateways, event: RecentEntry) -> dict[str, object]:
    shown: dict[str, object] = {
        "name": event.name,
        "container": event.container,
        "pipeline": event.pipeline,
        "job_id": event.job_id,
        "task_id": event.task_id,
        "state": shown_state(event),
        "at": event.at.isoformat(),
        "reason": redact(event.reason),
        "exit_code": None,
        "duration_seconds": None,
        "outputs": [],
        "stdout": None,
        "stderr": None,
        "failure": None,
        "stderr_tail": "",
    }
    if event.state != InputState.COLLECTED.value or shown["state"] == "superseded":
        return shown
    manifest = gw.blobs.read_json(gw.settings.results_container, ids.result_prefix(event.name) + ids.MANIFEST_NAME)
    if manifest is None or manifest.get("task_id") != event.task_id:
        shown["reason"] = "its manifest has since been replaced by a newer upload's"
        return shown
    prefix = ids.result_prefix(event.name)
    failure = manifest.get("failure")
    tail = str(manifest.get("stderr_tail") or "")
    shown.update(
        exit_code=manifest.get("exit_code"),
        duration_seconds=_duration(manifest.get("started_at"), manifest.get("finished_at")),
        outputs=[_link(prefix, name) for name in _names(manifest.get("outputs"))],
        stdout=_link(prefix, manifest.get("stdout")),
        stderr=_link(prefix, manifest.get("stderr")),
        failure=redact_value(failure) if isinstance(failure, dict) else None,
        stderr_tail=redact("\n".join(tail.splitlines()[-STDERR_LINES:])),
    )
    return shown


def _link(prefix: str, path: object) -> dict[str, str] | None:
    """A result blob as the page links it: its name below the input's folder, and its path in `results`."""
    if not isinstance(path, str) or not path:
        return None
    return {"name": path[len(prefix) :] if path.startswith(prefix) else path, "path": path}


def _names(value: object) -> list[str]:
    return [name for name in value if isinstance(name, str)] if isinstance(value, list) else []


def _duration(started: object, finished: object) -> float | None:
    try:
        return round((datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))).total_seconds(), 3)
    except ValueError:
        return None


def page_html() -> tuple[str, str]:
    """The page and its Content-Security-Policy: the script and style inline, allowed by a nonce made here."""
    nonce = secrets.token_urlsafe(18)
    document = (PAGE_DIR / "status.html").read_text(encoding="utf-8")
    script = (PAGE_DIR / "status.js").read_text(encoding="utf-8")
    style = (PAGE_DIR / "status.css").read_text(encoding="utf-8")
    document = document.replace("NONCE", nonce).replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    policy = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return document, policy


def result_url(gw: Gateways, path: str, valid_seconds: int = RESULT_LINK_SECONDS) -> str | None:
    """A short read-only URL for one blob in `results` (the page's output links), None if there is no such blob."""
    if not path or len(path) > ids.MAX_BLOB_NAME or gw.blobs.get_blob(gw.settings.results_container, path) is None:
        return None
    return gw.blobs.read_url(gw.settings.results_container, path, valid_seconds)
