"""`batchdrop status`: the status API's document as tables."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from local.cli.errors import CliError
from local.cli.state import require_stack
from local.cli.tables import table

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
    lines.append(f"event dead letters: {count} blob(s)" + (f" ({per})" if per else "")
                 + f" in container {dead.get('container', 'eventgrid-deadletter')}")
    for name in dead.get("newest") or []:
        lines.append(f"  {name}")
    for entry in subscriptions or []:
        state = entry.get("provisioningState", "?")
        line = (f"event subscription {entry.get('name')}: {state}, {entry.get('pending', 0)} pending, "
                f"{entry.get('delivered', 0)} delivered, {entry.get('dead_lettered', 0)} dead-lettered")
        if state != "Succeeded":
            line += f" ({entry.get('reason', '')})"
        lines.append(line)
    return lines


def render_status(document: Mapping[str, Any], limit: int = 10) -> list[str]:
    lines: list[str] = []
    pipelines = document.get("pipelines") or []
    described = [f"{p.get('name')} (prefix {p.get('prefix', '')!r}, glob {p.get('glob', '*')!r})" for p in pipelines]
    lines.append("pipelines: " + (", ".join(described) or "none"))
    jobs = document.get("jobs") or []
    totals = document.get("totals") or {}
    rows: list[list[object]] = []
    for job in jobs:
        counts = job.get("counts") or {}
        rows.append([job.get("job_id", "?"), job.get("pipeline", "?"), job.get("state", "?"),
                     *(counts.get(key, 0) for key in COUNT_COLUMNS)])  # fmt: skip
    rows.append(["TOTAL", "", "", *(totals.get(key, 0) for key in COUNT_COLUMNS)])
    numeric = range(3, 3 + len(COUNT_COLUMNS))
    lines += table(["JOB", "PIPELINE", "STATE", *(c.upper() for c in COUNT_COLUMNS)], rows, numeric)
    poison = document.get("poison") or {}
    poison_text = ", ".join(f"{queue} {count}" for queue, count in poison.items()) or "0"
    lines.append(f"rejected {totals.get('rejected', 0)}, skipped {totals.get('skipped', 0)}, poison: {poison_text}")
    rejected = sorted(document.get("rejected") or [], key=lambda r: str(r.get("at", "")), reverse=True)
    if rejected:
        lines.append("rejected (newest first):")
        lines += [f"  {r.get('input', '?')}: {r.get('reason', '')} ({r.get('at', '')})" for r in rejected[:limit]]
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


def _report(host_url: str, eventgrid_url: str | None) -> str:
    document = fetch_status(host_url)
    subscriptions = fetch_subscriptions(eventgrid_url) if eventgrid_url else None
    return "\n".join([*render_status(document), *render_events(document, subscriptions)])


def cmd_status(args: argparse.Namespace) -> int:
    eventgrid_url: str | None = None
    if args.url:
        host_url = args.url.rstrip("/")
    else:
        info = require_stack()
        host_url = info.host_url
        eventgrid = info.processes.get("eventgrid")
        eventgrid_url = eventgrid.url.rstrip("/") if eventgrid is not None else None
    if not args.watch:
        print(_report(host_url, eventgrid_url))
        return 0
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            try:
                text = _report(host_url, eventgrid_url)
            except CliError as error:
                text = f"(status unavailable: {error})"
            stamp = datetime.now().astimezone().strftime("%H:%M:%S")
            print(f"{clear}{stamp}  every {args.interval:g} s, Ctrl-C to stop\n{text}\n", flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
