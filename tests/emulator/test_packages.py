"""Application packages: the account's store, default versions, per-node install and the errors, through the SDK."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.exceptions import ResourceExistsError

from apps.csvstats.build import build
from local.batch.packages import PackageError, PackageStore, environment_name, extract
from tests.emulator.conftest import VM, unique, wait_for_task

WEATHER = "station,temp_c,rain_mm\nOslo,-3.5,0.0\nBergen,4.5,11.0\nTromso,-7.0,\n"


def make_zip(path: Path, files: dict[str, str], modes: dict[str, int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            entry = zipfile.ZipInfo(name)
            entry.external_attr = (stat.S_IFREG | (modes or {}).get(name, 0o644)) << 16
            archive.writestr(entry, text)
    return path


def app_id(prefix: str) -> str:
    return unique(prefix).replace("-", "_")


@pytest.fixture
def store(state_dir: Path) -> PackageStore:
    """The shared emulator's store, as `batchdrop package add` writes it."""
    return PackageStore(Path(state_dir) / "packages")


def stdout_of(batch: BatchClient, job_id: str, task_id: str) -> str:
    return b"".join(batch.download_task_file(job_id, task_id, "stdout.txt")).decode()


def run(
    batch: BatchClient, job_id: str, task_id: str, command: str, refs: list[m.BatchApplicationPackageReference]
) -> m.BatchTask:
    batch.create_task(
        job_id, m.BatchTaskCreateOptions(id=task_id, command_line=command, application_package_references=refs)
    )
    return wait_for_task(batch, job_id, task_id)


# ---------------------------------------------------------------- the store and the archive, without the emulator


def test_environment_names_follow_batch_linux_rules() -> None:
    assert environment_name("blender", "2.7") == "AZ_BATCH_APP_PACKAGE_blender_2_7"
    assert environment_name("My-App", "1.0-beta_2") == "AZ_BATCH_APP_PACKAGE_My_App_1_0_beta_2"
    assert environment_name("csvstats", None) == "AZ_BATCH_APP_PACKAGE_csvstats"


def test_store_refuses_bad_ids_versions_and_files(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    good = make_zip(tmp_path / "good.zip", {"tool.sh": "echo hi\n"})
    for bad_id in ("", "a/b", "a.b", "x" * 65, "../up"):
        with pytest.raises(PackageError, match="application id"):
            store.add(bad_id, "1.0", good)
    for bad_version in ("", ".1", "1/2", "v" * 65, "1 0"):
        with pytest.raises(PackageError, match="version"):
            store.add("tool", bad_version, good)
    (tmp_path / "notes.txt").write_text("not a zip")
    with pytest.raises(PackageError, match="is not a zip file"):
        store.add("tool", "1.0", tmp_path / "notes.txt")
    with pytest.raises(PackageError, match="is not a file"):
        store.add("tool", "1.0", tmp_path / "missing.zip")
    with pytest.raises(PackageError, match="no version '9'"):
        store.set_default("tool", "9")
    assert store.describe() == []


def test_store_refuses_escaping_entries_and_symlinks(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    for name in ("../evil.sh", "/etc/evil", "a/../../evil"):
        with pytest.raises(PackageError, match="outside the package directory"):
            store.add("tool", "1.0", make_zip(tmp_path / "slip.zip", {name: "x"}))
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        entry = zipfile.ZipInfo("passwd")
        entry.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(entry, "/etc/passwd")
    with pytest.raises(PackageError, match="symbolic link"):
        store.add("tool", "1.0", link)
    with pytest.raises(PackageError, match="symbolic link"):
        extract(link, tmp_path / "unpacked")
    assert not (tmp_path / "unpacked" / "passwd").exists()
    assert store.applications() == []


def test_store_versions_and_default(tmp_path: Path) -> None:
    store = PackageStore(tmp_path / "packages")
    first = make_zip(tmp_path / "one.zip", {"v.txt": "1"})
    second = make_zip(tmp_path / "two.zip", {"v.txt": "2"})
    store.add("tool", "1.0", first)
    with pytest.raises(PackageError, match="no default version"):
        store.find("tool", None)
    store.add("tool", "2.0", second, make_default=True)
    store.add("tool", "1.0", first)  # the same bytes again: nothing to do
    with pytest.raises(PackageError, match="already exists with other contents"):
        store.add("tool", "1.0", second)
    assert store.find("tool", None).version == "2.0"
    assert store.find("tool", "1.0").path == tmp_path / "packages" / "tool" / "1.0.zip"
    with pytest.raises(PackageError, match=r"has no version '3\.0'"):
        store.find("tool", "3.0")
    with pytest.raises(PackageError, match="does not exist"):
        store.find("other", "1.0")
    described = store.describe()
    assert [(a["id"], a["defaultVersion"]) for a in described] == [("tool", "2.0")]
    assert [v["version"] for v in described[0]["versions"]] == ["1.0", "2.0"]  # type: ignore[index]


def test_extract_keeps_execute_bits_and_stays_inside(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "p.zip", {"bin/run.sh": "#!/bin/sh\n", "data/x.txt": "x"}, {"bin/run.sh": 0o755})
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "bin" / "run.sh").stat().st_mode & 0o100
    assert not (tmp_path / "out" / "data" / "x.txt").stat().st_mode & 0o111


# ---------------------------------------------------------------- through the SDK against the shared emulator


def test_csvstats_package_produces_stats_on_a_node(
    batch: BatchClient, job_id: str, store: PackageStore, tmp_path: Path
) -> None:
    application = app_id("csvstats")
    store.add(application, "1.0", build(tmp_path / "csvstats.zip"))
    package = f"$AZ_BATCH_APP_PACKAGE_{application}_1_0"
    command = (
        f'/bin/sh -c \'printf "{WEATHER}" > weather.csv && '
        f'python3 "{package}/csvstats.py" weather.csv out && cat out/stats.json\''
    )
    done = run(
        batch, job_id, "stats", command, [m.BatchApplicationPackageReference(application_id=application, version="1.0")]
    )
    assert done.execution_info is not None and done.execution_info.exit_code == 0, done.execution_info
    stats = json.loads(stdout_of(batch, job_id, "stats").split("\n", 1)[1])
    assert stats["rows"] == 3
    assert stats["columns"]["temp_c"] == {"count": 3, "mean": pytest.approx(-2.0), "min": -7.0, "max": 4.5}
    assert stats["columns"]["rain_mm"]["count"] == 2
    assert stats["text_columns"] == ["station"]
    assert done.node_info is not None
    unpacked = Path(store.root).parent / "nodes" / str(done.node_info.node_id) / "applications" / f"{application}#1.0"
    assert sorted(p.name for p in unpacked.iterdir()) == ["csvstats.py", "lib"]


def test_default_version_is_used_when_none_is_given(
    batch: BatchClient, job_id: str, store: PackageStore, tmp_path: Path
) -> None:
    application = app_id("tool")
    store.add(application, "1.0", make_zip(tmp_path / "1.zip", {"version.txt": "one\n"}))
    store.add(application, "2.0", make_zip(tmp_path / "2.zip", {"version.txt": "two\n"}), make_default=True)
    default = run(
        batch, job_id, "default", f"/bin/sh -c 'cat \"$AZ_BATCH_APP_PACKAGE_{application}/version.txt\"'",
        [m.BatchApplicationPackageReference(application_id=application)],
    )  # fmt: skip
    pinned = run(
        batch, job_id, "pinned", f"/bin/sh -c 'cat \"$AZ_BATCH_APP_PACKAGE_{application}_1_0/version.txt\"'",
        [m.BatchApplicationPackageReference(application_id=application, version="1.0")],
    )  # fmt: skip
    assert default.execution_info is not None and default.execution_info.exit_code == 0
    assert stdout_of(batch, job_id, "default") == "two\n"
    assert pinned.execution_info is not None and pinned.execution_info.exit_code == 0
    assert stdout_of(batch, job_id, "pinned") == "one\n"


def test_a_package_is_unpacked_once_per_node(batch: BatchClient, store: PackageStore, tmp_path: Path) -> None:
    application = app_id("once")
    store.add(application, "1", make_zip(tmp_path / "p.zip", {"tool.txt": "x"}))
    pool = unique("pkg-pool")
    batch.create_pool(m.BatchPoolCreateOptions(id=pool, **VM, target_dedicated_nodes=1))
    job = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id=pool)))
    try:
        ref = [m.BatchApplicationPackageReference(application_id=application, version="1")]
        variable = f"$AZ_BATCH_APP_PACKAGE_{application}_1"
        first = run(batch, job, "first", f"/bin/sh -c 'touch \"{variable}/seen-by-first\"'", ref)
        second = run(batch, job, "second", f"/bin/sh -c 'test -f \"{variable}/seen-by-first\"'", ref)
        assert first.execution_info is not None and first.execution_info.exit_code == 0
        assert second.execution_info is not None and second.execution_info.exit_code == 0, "unpacked again"
    finally:
        batch.begin_delete_job(job, polling_interval=0).result()  # type: ignore[arg-type]
        batch.begin_delete_pool(pool, polling_interval=0).result()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("version", "reason"),
    [("1.0", "does not exist"), (None, "does not exist")],
)
def test_a_task_naming_an_unknown_application_fails_with_application_package_error(
    batch: BatchClient, job_id: str, version: str | None, reason: str
) -> None:
    task = unique("t")
    done = run(
        batch,
        job_id,
        task,
        "true",
        [m.BatchApplicationPackageReference(application_id=app_id("nope"), version=version)],
    )
    info = done.execution_info
    assert info is not None and info.result == m.BatchTaskExecutionResult.FAILURE
    assert info.exit_code is None
    assert info.failure_info is not None and info.failure_info.code == "ApplicationPackageError"
    assert info.failure_info.category == m.BatchErrorSourceCategory.USER_ERROR
    assert reason in str({d.name: d.value for d in info.failure_info.details or []}["Message"])


def test_a_task_naming_an_unknown_version_or_no_default_fails(
    batch: BatchClient, job_id: str, store: PackageStore, tmp_path: Path
) -> None:
    application = app_id("nodefault")
    store.add(application, "1.0", make_zip(tmp_path / "p.zip", {"x": "x"}))
    for task, version, reason in (
        ("unknown-version", "9.9", "has no version '9.9'"),
        ("no-default", None, "no default"),
    ):
        done = run(
            batch,
            job_id,
            task,
            "true",
            [m.BatchApplicationPackageReference(application_id=application, version=version)],
        )
        info = done.execution_info
        assert info is not None and info.failure_info is not None, task
        assert info.failure_info.code == "ApplicationPackageError"
        details = {d.name: d.value for d in info.failure_info.details or []}
        assert reason in str(details["Message"]) and details["ApplicationId"] == application


def test_a_pool_naming_an_unknown_package_is_refused_with_409(
    batch: BatchClient, store: PackageStore, tmp_path: Path
) -> None:
    application = app_id("poolpkg")
    store.add(application, "1.0", make_zip(tmp_path / "p.zip", {"x": "x"}))
    for ref in (
        m.BatchApplicationPackageReference(application_id=app_id("missing"), version="1.0"),
        m.BatchApplicationPackageReference(application_id=application, version="2.0"),
        m.BatchApplicationPackageReference(application_id=application),  # no default version
    ):
        with pytest.raises(ResourceExistsError) as raised:
            batch.create_pool(
                m.BatchPoolCreateOptions(
                    id=unique("bad-pool"), **VM, target_dedicated_nodes=0, application_package_references=[ref]
                )
            )
        assert raised.value.error is not None and raised.value.error.code == "InvalidApplicationPackageReferences"
        assert raised.value.status_code == 409


def test_pool_references_reach_its_tasks(batch: BatchClient, store: PackageStore, tmp_path: Path) -> None:
    application = app_id("poolwide")
    store.add(application, "3", make_zip(tmp_path / "p.zip", {"hello.sh": "echo pool package\n"}), make_default=True)
    pool = unique("pkg-pool")
    batch.create_pool(
        m.BatchPoolCreateOptions(
            id=pool, **VM, target_dedicated_nodes=1,
            application_package_references=[m.BatchApplicationPackageReference(application_id=application)],
        )
    )  # fmt: skip
    job = unique("job")
    batch.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id=pool)))
    try:
        done = run(batch, job, "uses", f"/bin/sh -c 'sh \"$AZ_BATCH_APP_PACKAGE_{application}/hello.sh\"'", [])
        assert done.execution_info is not None and done.execution_info.exit_code == 0
        assert stdout_of(batch, job, "uses") == "pool package\n"
        with pytest.raises(ResourceExistsError) as raised:
            batch.update_pool(
                pool,
                m.BatchPoolUpdateOptions(
                    application_package_references=[
                        m.BatchApplicationPackageReference(application_id="nope", version="1")
                    ]
                ),
            )
        assert raised.value.error is not None and raised.value.error.code == "InvalidApplicationPackageReferences"
    finally:
        batch.begin_delete_job(job, polling_interval=0).result()  # type: ignore[arg-type]
        batch.begin_delete_pool(pool, polling_interval=0).result()  # type: ignore[arg-type]
