"""`batchdrop open`: the status page (GET api/page on the dev host, or on the Functions host given by --url)."""

from __future__ import annotations

import argparse
import os
import webbrowser

from local.cli.state import require_stack
from local.cli.status import FUNCTION_KEY_SETTING

PAGE_ROUTE = "/api/page"


def page_url(host_url: str) -> str:
    """The status page of a host (no key: the local dev host enforces none)."""
    return host_url.rstrip("/") + PAGE_ROUTE


def cmd_open(args: argparse.Namespace) -> int:
    url = page_url(args.url if args.url else require_stack().host_url)
    key = os.environ.get(FUNCTION_KEY_SETTING) if args.url else None
    # On Azure the page wants the function key in its address; the page itself never shows it. The printed
    # URL names the setting instead of the key, so the key stays out of terminals and their scrollback.
    opened = not args.print_only and webbrowser.open(f"{url}?code={key}" if key else url)
    shown = f"{url}?code=${FUNCTION_KEY_SETTING}" if key else url
    print(f"opened the status page: {shown}" if opened else f"status page: {shown}")
    return 0
