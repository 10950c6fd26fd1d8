"""The `batchdrop` command line: arguments → one command function; known errors → one message, exit 1."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from local.cli.demo import DEMO_TIMEOUT_SECONDS, cmd_demo
from local.cli.errors import CliError
from local.cli.lifecycle import cmd_down, cmd_up
from local.cli.packages import cmd_package_add, cmd_package_list
from local.cli.page import cmd_open
from local.cli.rerun import cmd_rerun
from local.cli.results import cmd_logs, cmd_results
from local.cli.state import DEFAULT_PIPELINES, SAMPLES_DIR
from local.cli.status import FUNCTION_KEY_SETTING, cmd_status
from local.cli.storage import cmd_drop
from local.stack import StackError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchdrop",
        description="Run batchdrop locally (Azurite + the Batch emulator + the dev host) and use it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start Azurite, the Batch emulator and the dev host")
    up.add_argument("--detach", action="store_true", help="leave the stack running in the background and return")
    up.add_argument("--pipelines", default=str(DEFAULT_PIPELINES), metavar="FILE",
                    help="pipelines file (default: samples/pipelines.json)")  # fmt: skip
    up.add_argument("--random-ports", action="store_true",
                    help="don't try the usual ports (7071 for the host, 10000-10002 for Azurite) first")  # fmt: skip
    up.set_defaults(handler=cmd_up)

    down = commands.add_parser("down", help="stop the local stack started by `up` (or a demo left behind)")
    down.set_defaults(handler=cmd_down)

    drop = commands.add_parser("drop", help="upload files into the input container")
    drop.add_argument("files", nargs="+", metavar="FILE")
    drop.add_argument("--as", dest="as_name", metavar="NAME", help="blob name for the (single) file")
    drop.set_defaults(handler=cmd_drop)

    status = commands.add_parser("status", help="jobs, task counts, rejected inputs and poison messages")
    status.add_argument("--watch", action="store_true", help="progress bars per job, refreshed until Ctrl-C")
    status.add_argument("--until-idle", action="store_true",
                        help="with --watch: stop when nothing is queued or running and every manifest is out")
    status.add_argument("--json", action="store_true", help="print the status API's JSON document")
    status.add_argument("--wide", action="store_true", help="print names whole instead of fitting the terminal")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="refresh interval for --watch")
    status.add_argument("--url", help="a Functions host to ask instead of the local one (key from "
                        f"{FUNCTION_KEY_SETTING})")  # fmt: skip
    status.set_defaults(handler=cmd_status)

    page = commands.add_parser("open", help="open the status page in a browser (prints its URL when there is none)")
    page.add_argument("--url", help=f"a Functions host instead of the local one (key from {FUNCTION_KEY_SETTING})")
    page.add_argument("--print", dest="print_only", action="store_true", help="only print the URL")
    page.set_defaults(handler=cmd_open)

    results = commands.add_parser("results", help="list published results (those with a _manifest.json)")
    results.add_argument("--download", metavar="DIR", help="also copy every result's files into DIR")
    results.add_argument("--json", action="store_true", help="print the manifests as JSON")
    results.add_argument("--wide", action="store_true", help="print names whole instead of fitting the terminal")
    results.set_defaults(handler=cmd_results)

    logs = commands.add_parser("logs", help="print a result's stdout and stderr")
    logs.add_argument("name", metavar="NAME", help="the input's name in the input container")
    logs.add_argument("--run", type=int, metavar="N", help="an earlier run, kept under _history/ by a re-run")
    logs.set_defaults(handler=cmd_logs)

    rerun = commands.add_parser("rerun", help="run inputs again (their current version) as new tasks")
    rerun.add_argument("names", nargs="*", metavar="NAME", help="inputs to run again")
    rerun.add_argument("--failed", action="store_true", help="every input whose manifest says failed")
    rerun.add_argument("--all", action="store_true", help="with --pipeline: every input the pipeline takes")
    rerun.add_argument("--pipeline", metavar="P", help="only inputs of this pipeline (--failed), or all of it (--all)")
    rerun.add_argument("--since", metavar="TIME", help="with --failed: failures collected since TIME (ISO, or 2h ago)")
    rerun.add_argument("--force", action="store_true", help="also inputs queued or running: terminate that task first")
    rerun.add_argument("--id", metavar="ID", help="the request's id (default: a new one); the same id never runs "
                       "an input twice, so a request can be retried with it")  # fmt: skip
    rerun.add_argument("--json", action="store_true", help="print the app's answer as JSON")
    rerun.add_argument("--wide", action="store_true", help="print names whole instead of fitting the terminal")
    rerun.add_argument("--url", help=f"a Functions host instead of the local one (key from {FUNCTION_KEY_SETTING})")
    rerun.set_defaults(handler=cmd_rerun)

    package = commands.add_parser("package", help="application packages in the local Batch account (add, list)")
    package_commands = package.add_subparsers(dest="package_command", required=True, metavar="SUBCOMMAND")
    add = package_commands.add_parser("add", help="add a zip as a version of an application (like "
                                      "`az batch application package create`)")  # fmt: skip
    add.add_argument("application_id", metavar="ID", help="application id: 1-64 letters, digits, - and _")
    add.add_argument("version", metavar="VERSION", help="1-64 letters, digits, -, _ and . (not first)")
    add.add_argument("file", metavar="FILE.zip", help="the package: a zip of the application's files")
    add.add_argument("--default", action="store_true", help="make it the version used when a reference names none")
    add.set_defaults(handler=cmd_package_add)
    listing = package_commands.add_parser("list", help="applications, their versions and default versions")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_package_list)

    demo = commands.add_parser("demo", help="up, drop every sample, wait for every manifest, print them, stop")
    demo.add_argument("--timeout", type=float, default=DEMO_TIMEOUT_SECONDS, metavar="SECONDS")
    demo.add_argument("--samples", default=str(SAMPLES_DIR), metavar="DIR")
    demo.add_argument("--pipelines", default=str(DEFAULT_PIPELINES), metavar="FILE")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (CliError, StackError) as error:
        print(f"batchdrop {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`batchdrop status --watch | head`): stop quietly, like other CLI tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
