"""`batchdrop`: run the local stack and use it — up, down, drop, status, results, logs, rerun, package, demo.

State lives in `.batchdrop/` at the project root: `stack.json` (process ids and identities, URLs and the
Azurite connection string, readable by the owner only) and the servers' data and logs. Nothing here prints a
key, a connection string or a SAS token.

| module | what it holds |
|---|---|
| `state.py` | the state directory and the stack file (`StackInfo`) |
| `processes.py` | whether a recorded pid is still the process `up` started (psutil) |
| `lifecycle.py` | `up` (foreground or detached) and `down` |
| `storage.py` | containers, the apps upload, `drop` |
| `packages.py` | `package add` and `package list`: application packages in the emulator's store |
| `status.py`, `results.py` (and `logs`), `rerun.py`, `demo.py` | those commands |
| `tables.py` | tables that fit the terminal: names shortened in the middle (`--wide` prints them whole) |
| `entry.py` | the argument parser and `main` (the `batchdrop` console script) |
"""

from local.cli.demo import Wait, cmd_demo, expected_status, sample_files, sample_inputs, wait_for_manifests
from local.cli.entry import build_parser, main
from local.cli.errors import CliError, Interrupted
from local.cli.lifecycle import cmd_down, cmd_up, describe_stack, start_local_stack, stop_recorded, stop_stack
from local.cli.packages import add_package, stack_packages
from local.cli.processes import Finding, Identity, Verdict
from local.cli.results import Result, download_results, list_results, read_manifest, render_results
from local.cli.state import (
    STATE_DIR_SETTING,
    ProcessInfo,
    StackInfo,
    demo_workdir,
    require_stack,
    stack_file,
    state_dir,
)
from local.cli.status import fetch_status, render_status
from local.cli.storage import app_files, create_containers, drop_files, prepare_storage, upload_apps
from local.cli.tables import table

__all__ = [
    "STATE_DIR_SETTING",
    "CliError",
    "Finding",
    "Identity",
    "Interrupted",
    "ProcessInfo",
    "Result",
    "StackInfo",
    "Verdict",
    "Wait",
    "add_package",
    "app_files",
    "build_parser",
    "cmd_demo",
    "cmd_down",
    "cmd_up",
    "create_containers",
    "demo_workdir",
    "describe_stack",
    "download_results",
    "drop_files",
    "expected_status",
    "fetch_status",
    "list_results",
    "main",
    "prepare_storage",
    "read_manifest",
    "render_results",
    "render_status",
    "require_stack",
    "sample_files",
    "sample_inputs",
    "stack_file",
    "stack_packages",
    "start_local_stack",
    "state_dir",
    "stop_recorded",
    "stop_stack",
    "table",
    "upload_apps",
    "wait_for_manifests",
]
