"""`batchdrop status`: the status API's document as tables."""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from local.cli.errors import CliError
from local.cli.state import require_stack
from local.cli.tables import fit_line, shorten_middle, table, terminal_width

FUNCTION_KEY_SETTING = "BATCHDROP_FUNCTION_KEY"
COUNT_COLUMNS = ("queued", "running", "succeeded", "failed", "collected")


def fetch_status(host_url: str, timeout: float = 15.0) -> dict[str, Any]:
    """GET {host}/api/status; a function key from BATCHDROP_FUNCTION_KEY when the host wants one."""
    request = urllib.request.Request(f"{host_url}/api/status", headers={"Accept": "application/json"})  # noqa: S310
    key = os.environ.get(FUNCTION_KEY_SETTING)
    if key:
        request.add_header("x-functions-key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            document = json.load(response)
    except urllib.error.HTTPError as error:
        body = error.read(500).decode(errors="replace")
        hint = f" (set {FUNCTION_KEY_SETTING})" if error.code in (401, 403) else ""
        raise CliError(f"GET {host_url}/api/status: HTTP {error.code}{hint}: {body}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(f"the dev host at {host_url} does not answer ({reason}); is the stack up?") from None
    except ValueError:
        raise CliError(f"GET {host_url}/api/status did not return JSON") from None
    if not isinstance(document, dict):
        raise CliError(f"GET {host_url}/api/status returned {type(document).__name__}, not an object")
    return document


def fetch_subscriptions(eventgrid_url: str, timeout: float = 5.0) -> list[dict[str, Any]] | None:
    """The local Event Grid's subscriptions and their state; None when it does not answer."""
    try:
        with urllib.request.urlopen(f"{eventgrid_url}/_eventgrid/subscriptions", timeout=timeout) as response:  # noqa: S310
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    entries = document.get("subscriptions") if isinstance(document, dict) else None
    return [entry for entry in entries if isinstance(entry, dict)] if isinstance(entries, list) else None


def render_events(document: Mapping[str, Any], subscriptions: list[dict[str, Any]] | None) -> list[str]:
    """Event Grid's dead letters (from the status API) and, locally, each subscription's state."""
    lines: list[str] = []
    dead = document.get("event_dead_letters") or {}
    count = f"{dead.get('blobs', 0)}{'+' if dead.get('capped') else ''}"
    per = ", ".join(f"{name} {n}" for name, n in (dead.get("by_subscription") or {}).items())
    lines.append(
        f"event dead letters: {count} blob(s)"
        + (f" ({per})" if per else "")
        + f" in container {dead.get('container', 'eventgrid-deadletter')}"
    )
    for name in dead.get("newest") or []:
        lines.append(f"  {name}")
    for entry in subscriptions or []:
        state = entry.get("provisioningState", "?")
        line = (
            f"event subscription {entry.get('name')}: {state}, {entry.get('pending', 0)} pending, "
            f"{entry.get('delivered', 0)} delivered, {entry.get('dead_lettered', 0)} dead-lettered"
        )
        if state != "Succeeded":
            line += f" ({entry.get('reason', '')})"
        lines.append(line)
    return lines


def render_status(document: Mapping[str, Any], limit: int = 10, width: int | None = None) -> list[str]:
    """The status document as lines; with `width`, every line fits in it (names shortened in the middle)."""
    lines: list[str] = []
    pipelines = document.get("pipelines") or []
    described = [f"{p.get('name')} (prefix {p.get('prefix', '')!r}, glob {p.get('glob', '*')!r})" for p in pipelines]
    lines.append(fit_line("pipelines: " + (", ".join(described) or "none"), width))
    jobs = document.get("jobs") or []
    totals = document.get("totals") or {}
    rows: list[list[object]] = []
    for job in jobs:
        counts = job.get("counts") or {}
        rows.append([job.get("job_id", "?"), job.get("pipeline", "?"), job.get("state", "?"),
                     *(counts.get(key, 0) for key in COUNT_COLUMNS)])  # fmt: skip
    rows.append(["TOTAL", "", "", *(totals.get(key, 0) for key in COUNT_COLUMNS)])
    numeric = range(3, 3 + len(COUNT_COLUMNS))
    lines += table(["JOB", "PIPELINE", "STATE", *(c.upper() for c in COUNT_COLUMNS)], rows, numeric, width)
    poison = document.get("poison") or {}
    poison_text = ", ".join(f"{queue} {count}" for queue, count in poison.items()) or "0"
    lines.append(f"rejected {totals.get('rejected', 0)}, skipped {totals.get('skipped', 0)}, poison: {poison_text}")
    rejected = sorted(document.get("rejected") or [], key=lambda r: str(r.get("at", "")), reverse=True)
    if rejected:
        lines.append("rejected (newest first):")
        lines += [
            fit_line(f"  {r.get('input', '?')}: {r.get('reason', '')} ({r.get('at', '')})", width)
            for r in rejected[:limit]
        ]
        if len(rejected) > limit:
            lines.append(f"  ... and {len(rejected) - limit} more")
    return lines


def totals_note(host_url: str) -> str:
    """The status API's totals in one parenthesis, for progress lines."""
    try:
        totals = fetch_status(host_url, timeout=5).get("totals") or {}
    except CliError:
        return " (status API not answering)"
    return " (" + ", ".join(f"{key} {totals.get(key, 0)}" for key in COUNT_COLUMNS) + ")"


def is_idle(document: Mapping[str, Any]) -> bool:
    """Nothing queued or running, and a manifest for every task that finished."""
    totals = document.get("totals") or {}
    finished = int(totals.get("succeeded", 0)) + int(totals.get("failed", 0))
    return not totals.get("queued") and not totals.get("running") and int(totals.get("collected", 0)) >= finished


def cmd_status(args: argparse.Namespace) -> int:
    eventgrid_url: str | None = None
    if args.url:
        host_url = args.url.rstrip("/")
    else:
        info = require_stack()
        host_url = info.host_url
        eventgrid = info.processes.get("eventgrid")
        eventgrid_url = eventgrid.url.rstrip("/") if eventgrid is not None else None
    if args.watch:
        return watch_status(host_url, args.interval, args.until_idle, None if args.wide else terminal_width())
    if args.until_idle:
        raise CliError("--until-idle goes with --watch")
    document = fetch_status(host_url)
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return 0
    subscriptions = fetch_subscriptions(eventgrid_url) if eventgrid_url else None
    lines = [
        *render_status(document, width=None if args.wide else terminal_width()),
        *render_events(document, subscriptions),
    ]
    print("\n".join(lines))
    return 0


def watch_status(host_url: str, interval: float, until_idle: bool, width: int | None) -> int:
    """Progress bars per job (tasks finished of tasks) and the manifests published, refreshed every `interval` s;
    with `until_idle`, return once nothing is queued or running and every finished task has its manifest."""
    console = Console(width=width) if width is not None else Console()
    name_width = max(16, min(48, (console.width or 80) // 3))
    columns = (TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"))  # fmt: skip
    with Progress(*columns, console=console, auto_refresh=False, redirect_stdout=False) as progress:
        manifests = progress.add_task("manifests".ljust(name_width), total=None, detail="waiting for the status API")
        bars: dict[str, TaskID] = {}
        while True:
            try:
                document = fetch_status(host_url)
            except CliError as error:
                progress.update(manifests, detail=f"status unavailable: {error}")
                document = None
            if document is not None:
                _update_bars(progress, bars, manifests, document, name_width)
                if until_idle and is_idle(document):
                    progress.refresh()
                    return 0
            progress.refresh()
            time.sleep(interval)


def _update_bars(
    progress: Progress, bars: dict[str, TaskID], manifests: TaskID, document: Mapping[str, Any], name_width: int
) -> None:
    for job in document.get("jobs") or []:
        counts = job.get("counts") or {}
        job_id = str(job.get("job_id", "?"))
        done = int(counts.get("succeeded", 0)) + int(counts.get("failed", 0))
        total = done + int(counts.get("queued", 0)) + int(counts.get("running", 0))
        if job_id not in bars:
            label = shorten_middle(job_id, name_width).ljust(name_width)
            bars[job_id] = progress.add_task(label, total=total, detail="")
        detail = (f"{counts.get('queued', 0)} queued, {counts.get('running', 0)} running, "
                  f"{counts.get('failed', 0)} failed, {job.get('state', '?')}")  # fmt: skip
        progress.update(bars[job_id], total=max(total, 1), completed=done, detail=detail)
    totals = document.get("totals") or {}
    finished = int(totals.get("succeeded", 0)) + int(totals.get("failed", 0))
    tasks = finished + int(totals.get("queued", 0)) + int(totals.get("running", 0))
    collected = int(totals.get("collected", 0))
    detail = f"{collected} published, {totals.get('rejected', 0)} rejected, {totals.get('skipped', 0)} skipped"
    progress.update(manifests, total=max(tasks, collected, 1), completed=collected, detail=detail)
