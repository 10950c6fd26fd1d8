"""`python -m local.host --app function_app:app --host 127.0.0.1 --port 0 --state-dir DIR
[--settings FILE] [--webhook-key KEY] [--blob-scan-seconds N]`

Prints exactly one line, `READY http://127.0.0.1:<port>`, once serving; stops on SIGTERM.
Exits 1 (no READY line) when the app, its settings or host.json keep it from starting.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .bindings import FunctionApp
from .devhost import HostConfig, run
from .logs import configure_logging
from .settings import AppSettings, HostOptions, StartupError, read_settings_file

logger = logging.getLogger("local.host")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.host", description=__doc__.split("\n\n")[0])
    parser.add_argument("--app", required=True, help="module:attribute of the FunctionApp, e.g. function_app:app")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7071, help="port to bind; 0 picks a free one")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the host keeps its own state")
    parser.add_argument("--settings", type=Path, help="local.settings.json whose Values fill in app settings")
    parser.add_argument("--webhook-key", help="require ?code=KEY on the Event Grid webhooks")
    parser.add_argument("--blob-scan-seconds", type=float, default=2.0, help="blob container scan period")
    return parser.parse_args(argv)


def load_app(reference: str) -> tuple[FunctionApp, Path]:
    """Import `module:attribute` with the current directory on sys.path; the app and its root."""
    module_name, _, attribute = reference.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        logger.exception("Importing %s failed", module_name)
        raise StartupError(f"cannot import the app module {module_name!r}: {error}") from None
    app = getattr(module, attribute or "app", None)
    if app is None or not callable(getattr(app, "get_functions", None)):
        raise StartupError(f"{reference!r} is not an azure.functions.FunctionApp")
    # The function app root (where host.json lives) is the app module's directory.
    module_file = getattr(module, "__file__", None)
    root = Path(module_file).resolve().parent if module_file else Path.cwd()
    return app, root


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    # stdout carries the READY line and nothing else: whatever the app prints goes to stderr (the log).
    ready_stream, sys.stdout = sys.stdout, sys.stderr
    configure_logging(logging.INFO)
    try:
        if args.blob_scan_seconds <= 0:
            raise StartupError("--blob-scan-seconds must be positive")
        file_values = read_settings_file(args.settings) if args.settings else {}
        settings = AppSettings(dict(os.environ), file_values)
        settings.export_to(os.environ)
        app, root = load_app(args.app)
        host_json = root / "host.json" if (root / "host.json").exists() else Path.cwd() / "host.json"
        options = HostOptions.from_host_json(host_json)
        configure_logging(options.log_level)
        config = HostConfig(state_dir=args.state_dir, host=args.host, port=args.port,
                            webhook_key=args.webhook_key, blob_scan_seconds=args.blob_scan_seconds,
                            options=options)

        def ready(url: str) -> None:
            print(f"READY {url}", file=ready_stream, flush=True)

        run(app, config, settings, ready)
    except StartupError as error:
        logger.error("The host cannot start: %s", error)
        return 1
    finally:
        sys.stdout = ready_stream
    return 0


if __name__ == "__main__":
    sys.exit(main())
