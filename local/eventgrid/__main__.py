"""`python -m local.eventgrid --azurite-blob-url http://127.0.0.1:<port> --app-url http://127.0.0.1:<port>
--subscriptions FILE --state-dir DIR [--port N] [--retry-schedule 0.5,1,2,5,10] [--delivery-timeout S]`

Prints exactly one line, `READY http://127.0.0.1:<port>` (the proxy: point blob clients at it), once serving;
stops on SIGTERM. Placeholders in the subscriptions file come from this process's environment (the app settings).
Exits 1 with a message naming the problem when the subscriptions file is unusable.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .delivery import LOCAL_RETRY_SCHEDULE, Policy
from .grid import GridConfig, LocalEventGrid, placeholder_settings
from .subscriptions import SubscriptionError, load_subscriptions

DEFAULT_SUBSCRIPTIONS = Path(__file__).resolve().parent / "subscriptions.json"
logger = logging.getLogger("local.eventgrid")


def _schedule(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seconds") from None
    if not values or any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: at least one delay, none negative")
    return values


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    from local.stack import AZURITE_ACCOUNT, AZURITE_KEY

    parser = argparse.ArgumentParser(prog="python -m local.eventgrid", description=__doc__.split("\n\n")[0])
    parser.add_argument("--azurite-blob-url", required=True, help="Azurite's blob service, http://127.0.0.1:<port>")
    parser.add_argument("--app-url", required=True, help="the function app's base URL (subscription endpoints)")
    parser.add_argument("--subscriptions", type=Path, default=DEFAULT_SUBSCRIPTIONS, help="subscriptions file")
    parser.add_argument("--state-dir", type=Path, required=True, help="where the journal is kept")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the proxy's port; 0 picks a free one")
    parser.add_argument("--account", default=AZURITE_ACCOUNT)
    parser.add_argument("--retry-schedule", type=_schedule, default=LOCAL_RETRY_SCHEDULE,
                        help="seconds before each retry, the last one repeated (Azure: 10,30,60,300,...)")
    parser.add_argument("--delivery-timeout", type=float, default=30.0, help="seconds to wait for an answer")
    parser.add_argument("--workers", type=int, default=4, help="deliveries in flight per subscription")
    arguments = parser.parse_args(argv)
    arguments.account_key = AZURITE_KEY  # Azurite's published development key
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The storage SDK logs every request's headers at INFO; the proxy's own reads are not news.
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        subscriptions = load_subscriptions(args.subscriptions, placeholder_settings(os.environ))
    except SubscriptionError as error:
        logger.error("The local Event Grid cannot start: %s", error)
        return 1
    policy = Policy(retry_schedule=args.retry_schedule, delivery_timeout=args.delivery_timeout,
                    workers=max(1, args.workers))
    config = GridConfig(azurite_blob_url=args.azurite_blob_url, account=args.account, account_key=args.account_key,
                        app_url=args.app_url, state_dir=args.state_dir, host=args.host, port=args.port, policy=policy)
    grid = LocalEventGrid(config, subscriptions)
    stopped = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopped.set())
    url = grid.start()
    logger.info("Local Event Grid: proxy %s -> %s; %d subscription(s) from %s to %s", url, args.azurite_blob_url,
                len(subscriptions), args.subscriptions, args.app_url)
    print(f"READY {url}", flush=True)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        grid.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
