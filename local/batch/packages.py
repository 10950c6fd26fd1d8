"""The account's application packages: the store under `--packages-dir`, and installing a package on a node.

A Batch account holds applications; each has versions (one uploaded zip each) and optionally a default version
(`az batch application package create`, `az batch application set --default-version`). Here that is a directory:

    <packages-dir>/<applicationId>/<version>.zip     an uploaded package (`batchdrop package add`)
    <packages-dir>/<applicationId>/<version>/        a package already unpacked (read as is, never written)
    <packages-dir>/<applicationId>/application.json  {"defaultVersion": "<version>"}

Names follow the Batch management API (Azure/azure-rest-api-specs, specification/batch/resource-manager,
Application.tsp and ApplicationPackage.tsp): an application name matches `^[a-zA-Z0-9_-]+$`, a version
`^[a-zA-Z0-9_-][a-zA-Z0-9_.-]*$`, both 1 to 64 characters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

APPLICATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
VERSION = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
APPLICATION_FILE = "application.json"
# A zip larger than this when unpacked is refused: a node's disk is finite, and a zip bomb should fail at add.
MAX_UNPACKED_BYTES = 4 * 1024**3


class PackageError(ValueError):
    """A package that cannot be added, found or installed; the message says why."""


def check_application_id(application_id: str) -> str:
    if not APPLICATION_ID.fullmatch(application_id):
        raise PackageError(
            f"application id {application_id!r} is invalid: 1 to 64 letters, digits, hyphens and underscores"
        )
    return application_id


def check_version(version: str) -> str:
    if not VERSION.fullmatch(version):
        raise PackageError(
            f"version {version!r} is invalid: 1 to 64 letters, digits, hyphens, underscores and periods, "
            "not starting with a period"
        )
    return version


def environment_name(application_id: str, version: str | None) -> str:
    """The variable a Linux node sets: `AZ_BATCH_APP_PACKAGE_<id>[_<version>]`.

    Batch's docs ("Deploy applications to compute nodes with Batch application packages"): on Linux, periods,
    hyphens and number signs become underscores and the application id keeps its case
    (`AZ_BATCH_APP_PACKAGE_blender_2_7`); a reference without a version (the default) has no version suffix.
    """
    suffix = application_id if version is None else f"{application_id}_{version}"
    return "AZ_BATCH_APP_PACKAGE_" + re.sub(r"[.#-]", "_", suffix)


@dataclass(frozen=True)
class Package:
    """One version of an application in the store: a zip (uploaded) or a directory (unpacked)."""

    application_id: str
    version: str
    path: Path

    @property
    def is_zip(self) -> bool:
        return self.path.suffix == ".zip" and self.path.is_file()

    def digest(self) -> str:
        if not self.is_zip:
            return ""
        sha = hashlib.sha256()
        with self.path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
        return sha.hexdigest()


def _members(archive: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every entry with its safe relative path; PackageError for a path that leaves the package or a symlink."""
    found: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    total = 0
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts or re.match(r"^[A-Za-z]:", name):
            raise PackageError(f"the zip entry {info.filename!r} would land outside the package directory")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise PackageError(f"the zip entry {info.filename!r} is a symbolic link; packages may hold files only")
        total += info.file_size
        if total > MAX_UNPACKED_BYTES:
            raise PackageError(f"the zip unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        if relative.parts:
            found.append((info, relative))
    return found


def check_zip(path: Path) -> None:
    """PackageError unless `path` is a readable zip whose entries all stay inside the package."""
    if not path.is_file():
        raise PackageError(f"{path} is not a file")
    if not zipfile.is_zipfile(path):
        raise PackageError(f"{path} is not a zip file")
    try:
        with zipfile.ZipFile(path) as archive:
            _members(archive)
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        raise PackageError(f"{path} is not a readable zip file: {error}") from None
    if broken is not None:
        raise PackageError(f"{path}: the zip entry {broken!r} is corrupt")


def extract(zip_path: Path, target: Path) -> None:
    """Unpack into `target` (which must not exist): regular files and directories only, nothing outside it."""
    with zipfile.ZipFile(zip_path) as archive:
        members = _members(archive)
        target.mkdir(parents=True)
        root = target.resolve()
        for info, relative in members:
            destination = root.joinpath(*relative.parts)
            if not destination.resolve().is_relative_to(root):
                raise PackageError(f"the zip entry {info.filename!r} would land outside the package directory")
            if info.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as source, destination.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            # Keep the owner's execute bit a zip made on Linux records, so packaged scripts and binaries run.
            mode = (info.external_attr >> 16) & 0o777
            destination.chmod(0o755 if mode & 0o100 else 0o644)


class PackageStore:
    """The packages of one account: what `batchdrop package add` writes and the emulator reads."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def applications(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and APPLICATION_ID.fullmatch(p.name))

    def versions(self, application_id: str) -> list[Package]:
        base = self.root / application_id
        if not APPLICATION_ID.fullmatch(application_id) or not base.is_dir():
            return []
        found: dict[str, Package] = {}
        for entry in sorted(base.iterdir()):
            if entry.is_dir() and VERSION.fullmatch(entry.name):
                found.setdefault(entry.name, Package(application_id, entry.name, entry))
            elif entry.is_file() and entry.suffix == ".zip" and VERSION.fullmatch(entry.stem):
                found[entry.stem] = Package(application_id, entry.stem, entry)  # an upload wins over a directory
        return [found[version] for version in sorted(found)]

    def default_version(self, application_id: str) -> str | None:
        try:
            raw = json.loads((self.root / application_id / APPLICATION_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        version = raw.get("defaultVersion") if isinstance(raw, dict) else None
        return str(version) if version else None

    def find(self, application_id: str, version: str | None) -> Package:
        """The package a reference names; PackageError saying what is missing."""
        if not APPLICATION_ID.fullmatch(application_id) or not (self.root / application_id).is_dir():
            raise PackageError(f"application {application_id!r} does not exist in the account")
        wanted = version if version is not None else self.default_version(application_id)
        if wanted is None:
            raise PackageError(f"application {application_id!r} has no default version and no version was given")
        for package in self.versions(application_id):
            if package.version == wanted:
                return package
        raise PackageError(f"application {application_id!r} has no version {wanted!r}")

    def add(self, application_id: str, version: str, zip_path: Path, make_default: bool = False) -> Package:
        """Store a zip as a version; adding the same bytes again is a no-op, other bytes are refused."""
        check_application_id(application_id)
        check_version(version)
        check_zip(zip_path)
        base = self.root / application_id
        base.mkdir(parents=True, exist_ok=True)
        stored = base / f"{version}.zip"
        if stored.exists() or (base / version).exists():
            existing = Package(application_id, version, stored if stored.exists() else base / version)
            new_digest = Package(application_id, version, zip_path).digest()
            if existing.digest() != new_digest:
                # Nodes that installed the old bytes keep them (as on Batch); a new version number avoids that.
                raise PackageError(
                    f"{application_id} {version} already exists with other contents; add it as a new version"
                )
        else:
            partial = base / f".{version}.{uuid.uuid4().hex}.partial"
            shutil.copyfile(zip_path, partial)
            partial.replace(stored)
        if make_default:
            self.set_default(application_id, version)
        return Package(application_id, version, stored)

    def set_default(self, application_id: str, version: str) -> None:
        if not any(package.version == version for package in self.versions(application_id)):
            raise PackageError(f"application {application_id!r} has no version {version!r} to make the default")
        target = self.root / application_id / APPLICATION_FILE
        partial = target.with_name(f".{APPLICATION_FILE}.{uuid.uuid4().hex}")
        partial.write_text(json.dumps({"defaultVersion": version}) + "\n", encoding="utf-8")
        partial.replace(target)

    def describe(self) -> list[dict[str, Any]]:
        """Every application with its versions and default, as `batchdrop package list --json` prints them."""
        described: list[dict[str, Any]] = []
        for application_id in self.applications():
            default = self.default_version(application_id)
            versions = [
                {
                    "version": package.version,
                    "format": "zip" if package.is_zip else "directory",
                    "size": package.path.stat().st_size if package.is_zip else None,
                    "sha256": package.digest() or None,
                }
                for package in self.versions(application_id)
            ]
            described.append({"id": application_id, "defaultVersion": default, "versions": versions})
        return described


def install(package: Package, node_root: Path) -> Path:
    """The package unpacked on a node, under `applications/`, once per node however many tasks use it."""
    applications = node_root / "applications"
    installed = applications / f"{package.application_id}#{package.version}"
    if installed.exists() or installed.is_symlink():
        return installed
    applications.mkdir(parents=True, exist_ok=True)
    if not package.is_zip:
        # An unpacked package is linked, not copied: the store is the emulator's own directory.
        try:
            installed.symlink_to(package.path.resolve(), target_is_directory=True)
        except FileExistsError:
            pass
        return installed
    # Unpack beside it, then rename: a task never sees half a package, and two tasks racing both end with one.
    partial = applications / f".{installed.name}.{uuid.uuid4().hex}.partial"
    try:
        extract(package.path, partial)
        os.rename(partial, installed)
    except OSError:
        if not installed.is_dir():
            raise
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return installed
