"""`batchdrop package add|list`: application packages in the local stack's Batch account (the emulator's store).

On Azure the same step is `az batch application package create --application-name ID --version-name VERSION
--package-file FILE.zip` and `az batch application set --default-version VERSION`. Locally the running emulator
reads the store on every reference, so a package added here is usable at once, without a restart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from local.batch.packages import PackageError, PackageStore
from local.cli.errors import CliError
from local.cli.state import StackInfo, require_stack, shown
from local.cli.tables import table, terminal_width


def stack_packages(info: StackInfo) -> PackageStore:
    """The store of the stack's emulator (stack files written before `packages_dir` existed: the emulator default)."""
    return PackageStore(Path(info.packages_dir) if info.packages_dir else Path(info.workdir) / "batch" / "packages")


def add_package(store: PackageStore, application_id: str, version: str, zip_path: Path, make_default: bool) -> str:
    """Add the zip to the store; the line to print. CliError with the reason when it cannot be added."""
    try:
        package = store.add(application_id, version, zip_path, make_default=make_default)
    except PackageError as error:
        raise CliError(str(error)) from None
    default = store.default_version(application_id)
    note = " (the default version)" if default == version else (f" (default: {default})" if default else "")
    return (
        f"added {application_id} {version}{note}: {package.path.stat().st_size} bytes, sha256 {package.digest()[:12]}; "
        f'reference it as {{"id": "{application_id}", "version": "{version}"}} in a pipeline'
    )


def package_rows(store: PackageStore) -> list[list[str]]:
    rows: list[list[str]] = []
    for application in store.describe():
        for entry in application["versions"]:
            size = entry["size"]
            rows.append(
                [
                    str(application["id"]),
                    str(entry["version"]),
                    "yes" if entry["version"] == application["defaultVersion"] else "",
                    str(entry["format"]),
                    "-" if size is None else str(size),
                ]
            )
    return rows


def cmd_package_add(args: argparse.Namespace) -> int:
    store = stack_packages(require_stack())
    print(add_package(store, args.application_id, args.version, Path(args.file), args.default))
    return 0


def cmd_package_list(args: argparse.Namespace) -> int:
    store = stack_packages(require_stack())
    if args.json:
        print(json.dumps(store.describe(), indent=2))
        return 0
    rows = package_rows(store)
    if not rows:
        print(
            f"no application packages in {shown(store.root)}; add one with `batchdrop package add ID VERSION FILE.zip`"
        )
        return 0
    headers = ["APPLICATION", "VERSION", "DEFAULT", "FORMAT", "BYTES"]
    print("\n".join(table(headers, rows, numeric=[4], width=terminal_width())))
    return 0
