"""`python -m local.batch`: run the Batch emulator until SIGTERM; prints `READY <url>` once it accepts."""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from local.batch import containers
from local.batch.account import DEV_ACCOUNT_KEY, DEV_ACCOUNT_NAME
from local.batch.server import MAX_BODY_BYTES, EmulatorServer, Faults
from local.batch.service import BatchService

logger = logging.getLogger("local.batch")


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of HTTP statuses: {text!r}") from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local.batch", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="must be a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed in the READY line)")
    parser.add_argument("--state-dir", type=Path, required=True, help="state journal and node directories")
    parser.add_argument("--account-name", default=DEV_ACCOUNT_NAME)
    parser.add_argument("--account-key", default=DEV_ACCOUNT_KEY)
    parser.add_argument(
        "--packages-dir",
        type=Path,
        default=None,
        help="application packages as DIR/<applicationId>/<version>/ (default STATE/packages)",
    )
    parser.add_argument(
        "--auto-storage",
        default=None,
        metavar="CONNECTION_STRING",
        help="storage account for ResourceFile.autoStorageContainerName",
    )
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of API requests to fail (0..1)")
    parser.add_argument("--fault-statuses", type=_statuses, default=(429, 500, 503))
    parser.add_argument(
        "--fault-after-rate",
        type=float,
        default=0.0,
        help="fraction of mutating requests (POST/PUT/PATCH/DELETE) processed and then answered with a fault",
    )
    parser.add_argument("--fault-seed", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API request")
    parser.add_argument("--job-quota", type=int, default=None, help="active jobs allowed before 409")
    parser.add_argument(
        "--task-start-delay-ms",
        type=float,
        default=0.0,
        help="time each task attempt spends preparing before its files download (a slower node agent)",
    )
    parser.add_argument(
        "--completion-lag-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="keep a task `running` S seconds after its process exited and its output files uploaded, before it "
        "turns `completed` (Batch's state can lag behind the node)",
    )
    parser.add_argument(
        "--autoscale-interval-seconds",
        type=float,
        default=None,
        metavar="S",
        help="evaluate every autoscale pool's formula every S seconds instead of its autoScaleEvaluationInterval; "
        "sampling and the formula's time intervals are compressed by the same factor (for tests)",
    )
    parser.add_argument(
        "--preempt-spot-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pre-empt a Spot node this many seconds into a task's first run (fault injection)",
    )
    parser.add_argument(
        "--container-runtime",
        choices=("auto", "none", "docker", "podman"),
        default="auto",
        help="runtime for container tasks: auto finds a usable docker or podman on PATH; none runs no containers",
    )
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    parser.add_argument(
        "--auth-failure-status",
        type=int,
        choices=(401, 403),
        default=401,
        help="status for AuthenticationFailed (Batch's error table lists 403; azure-core maps only 401 "
        "to ClientAuthenticationError)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the emulator binds loopback only (--host 127.0.0.1)")
    if not 0.0 <= args.fault_rate <= 1.0 or not 0.0 <= args.fault_after_rate <= 1.0:
        parser.error("--fault-rate and --fault-after-rate must be between 0 and 1")
    if args.completion_lag_seconds < 0:
        parser.error("--completion-lag-seconds must not be negative")
    if args.autoscale_interval_seconds is not None and args.autoscale_interval_seconds <= 0:
        parser.error("--autoscale-interval-seconds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    # The storage SDK logs every request at INFO; the emulator's log is for the emulator.
    logging.getLogger("azure").setLevel(logging.WARNING)
    state_dir: Path = args.state_dir.resolve()
    service = BatchService(
        state_dir,
        args.account_name,
        packages_dir=args.packages_dir.resolve() if args.packages_dir else None,
        auto_storage_connection_string=args.auto_storage,
        job_quota=args.job_quota,
        task_start_delay_ms=args.task_start_delay_ms,
        autoscale_interval_seconds=args.autoscale_interval_seconds,
        completion_lag_seconds=args.completion_lag_seconds,
    )
    service.pools.preempt_spot_after = args.preempt_spot_after
    containers.RUNTIME.configure(args.container_runtime)
    # Probe the runtime (`docker info`) now, off the start-up path: the answer is cached for pools and tasks.
    threading.Thread(target=containers.RUNTIME.name, name="container-runtime-probe", daemon=True).start()
    faults = Faults(
        rate=args.fault_rate,
        statuses=args.fault_statuses,
        latency_ms=args.latency_ms,
        after_rate=args.fault_after_rate,
        random=random.Random(args.fault_seed),  # noqa: S311 - fault injection, not security
    )
    server = EmulatorServer(
        (args.host, args.port),
        service,
        args.account_name,
        args.account_key,
        faults,
        args.max_body_bytes,
        args.auth_failure_status,
    )
    service.account_url = server.url
    service.start()
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping", signum)
        stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("Batch emulator for account %s at %s, state in %s", args.account_name, server.url, state_dir)
    print(f"READY {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        service.stop()
        server.server_close()
        logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
