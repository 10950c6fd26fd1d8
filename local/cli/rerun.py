"""`batchdrop rerun`: POST a re-run request to the app's /api/rerun, retried under the same id until answered."""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from local.cli.errors import CliError
from local.cli.state import require_stack
from local.cli.status import FUNCTION_KEY_SETTING
from local.cli.tables import table, terminal_width

ATTEMPTS = 4
RETRY_SECONDS = 2.0
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_time(text: str, now: datetime | None = None) -> str:
    """--since as the API wants it: an ISO time (UTC when it names no zone), or a duration ago (30m, 2h, 1d)."""
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _UNITS:
        moment = (now or datetime.now(UTC)) - timedelta(**{_UNITS[text[-1]]: int(text[:-1])})
        return moment.isoformat()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r}: give a time (2026-12-01T03:00, UTC unless it says) or a duration "
                       "ago (30m, 2h, 1d)") from None  # fmt: skip
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The re-run request: its id is made here once, so every retry of it is the same request to the app."""
    if bool(args.names) + args.failed + args.all != 1:
        raise CliError("name inputs, or give --failed, or --pipeline P --all (exactly one of these)")
    if args.all and not args.pipeline:
        raise CliError("--all re-runs every input of one pipeline: name it with --pipeline")
    if args.since and not args.failed:
        raise CliError("--since selects failures: use it with --failed")
    body: dict[str, Any] = {"id": args.id or uuid.uuid4().hex, "force": args.force}
    if args.names:
        body["names"] = list(args.names)
    if args.failed:
        body["failed"] = True
    if args.all:
        body["all"] = True
    if args.pipeline:
        body["pipeline"] = args.pipeline
    if args.since:
        body["since"] = since_time(args.since)
    return body


def post_rerun(
    host_url: str, body: Mapping[str, Any], attempts: int = ATTEMPTS, timeout: float = 300
) -> dict[str, Any]:
    """POST the request; a lost answer (no connection, a 5xx) is retried with the same id, which the app makes
    into the same tasks, so a retry never runs an input twice."""
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(attempts):
        request = urllib.request.Request(  # noqa: S310 (the dev host or --url, http(s) only)
            f"{host_url}/api/rerun", data=data, method="POST",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )  # fmt: skip
        key = os.environ.get(FUNCTION_KEY_SETTING)
        if key:
            request.add_header("x-functions-key", key)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                document = json.load(response)
                if not isinstance(document, dict):
                    raise CliError(f"POST {host_url}/api/rerun returned {type(document).__name__}, not an object")
                return document
        except urllib.error.HTTPError as error:
            text = error.read(2000).decode(errors="replace")
            if error.code < 500:
                raise CliError(f"re-run refused (HTTP {error.code}): {_error_text(text)}") from None
            last = f"HTTP {error.code}: {_error_text(text)}"
        except (urllib.error.URLError, OSError) as error:
            last = f"the app at {host_url} does not answer ({getattr(error, 'reason', error)})"
        except ValueError:
            raise CliError(f"POST {host_url}/api/rerun did not return JSON") from None
        if attempt + 1 < attempts:
            time.sleep(RETRY_SECONDS * (attempt + 1))
    raise CliError(f"re-run request {body.get('id')} not answered after {attempts} attempts: {last}; "
                   f"run it again with --id {body.get('id')} to retry it safely")  # fmt: skip


def _error_text(text: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    return str(document.get("error", text)) if isinstance(document, dict) else text[:500]


def render_rerun(answer: Mapping[str, Any], width: int | None = None) -> list[str]:
    rows = [
        [o.get("name", "?"), o.get("action", "?"), o.get("run") or "-", o.get("reason") or o.get("task_id", "")]
        for o in answer.get("outcomes") or []
    ]
    lines = table(["INPUT", "ACTION", "RUN", "TASK OR REASON"], rows, numeric=(2,), width=width) if rows else []
    submitted, duplicate, refused = (answer.get(key, 0) for key in ("submitted", "duplicate", "refused"))
    lines.append(f"re-run {answer.get('id')}: {submitted} submitted, {duplicate} already re-run by this request, "
                 f"{refused} refused")  # fmt: skip
    return lines


def cmd_rerun(args: argparse.Namespace) -> int:
    body = request_body(args)
    host_url = args.url.rstrip("/") if args.url else require_stack().host_url
    answer = post_rerun(host_url, body)
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print("\n".join(render_rerun(answer, None if args.wide else terminal_width())))
    return 1 if answer.get("refused") and not answer.get("submitted") and not answer.get("duplicate") else 0
