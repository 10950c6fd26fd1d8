"""Fan-in groups through the real SDKs: Azurite for storage and the ledger, the emulator for Batch."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from azure.batch import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from local.stack import Azurite, Emulator
from shared import ids
from shared.status import status
from shared.submit import submit_blob, sweep
from tests.integration.pipeline_world import PipelineWorld, make_pipeline_world
from tests.waiting import wait_until

pytestmark = pytest.mark.integration
TASK_REQUESTS = ("Task_Add", "Task_AddCollection")
JOIN_APP = (Path(__file__).parents[2] / "apps" / "pairs" / "join.py").read_bytes()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, azurite: Azurite, emulator: Emulator) -> PipelineWorld:
    """`pairs/…`: R1 and R2 of a sample make a group; `solo/…`: the same, with a 1 s timeout."""
    namespace = uuid.uuid4().hex[:8]
    workdir = tmp_path_factory.mktemp("groups")
    common = {
        "command": "python3 {app_dir}/pairs/join.py {output_dir} {group} {inputs}",
        "app_files": ["pairs/join.py"],
        "outputs": ["joined.txt", "summary.json"],
        "pool": {"id": f"pool-{namespace}", "dedicated_nodes": 1, "task_slots_per_node": 4},
        "max_retries": 0,
        "max_wall_clock_seconds": 120,
    }
    group = {"key": r"(?P<key>.+)_R[12]\.txt", "expect": ["*_R1.txt", "*_R2.txt"]}
    pipelines = [
        {**common, "name": f"pairs-{namespace}", "match": {"prefix": "pairs/"},
         "group": {**group, "complete_within": "1h"}},
        {**common, "name": f"solo-{namespace}", "match": {"prefix": "solo/"},
         "group": {**group, "complete_within": "1s"}},
    ]  # fmt: skip
    pipelines_file = workdir / "group-pipelines.json"  # make_pipeline_world writes its own pipelines.json
    pipelines_file.write_text(json.dumps({"pipelines": pipelines}))
    built = make_pipeline_world(workdir, azurite, emulator, namespace, BATCHDROP_PIPELINES_FILE=str(pipelines_file))
    built.container("apps").upload_blob("pairs/join.py", JOIN_APP)
    return built


def task_requests(world: PipelineWorld) -> int:
    requests = world.emulator.stats()["requests"]
    assert isinstance(requests, dict)
    return sum(int(requests.get(operation, 0)) for operation in TASK_REQUESTS)


def group_tasks(world: PipelineWorld) -> list[str]:
    client = BatchClient(world.emulator.url,
                         AzureNamedKeyCredential(world.emulator.account_name, world.emulator.account_key))  # fmt: skip
    jobs = [job.job_id for job in world.gw.ledger.jobs(active_only=False)]
    return sorted(str(task.id) for job in jobs for task in client.list_tasks(job, select=["id"]))


def results_text(world: PipelineWorld, name: str) -> str:
    return world.container("results").download_blob(name).readall().decode()


def test_two_member_group_runs_once_when_its_second_member_arrives(world: PipelineWorld) -> None:
    world.drop("pairs/s1_R1.txt", b"first\n")
    before = task_requests(world)
    assert submit_blob(world.gw, world.names["input"], "pairs/s1_R1.txt").action == "grouped"
    sweep(world.gw)  # the sweep sees the member too, and the group is still open
    assert task_requests(world) - before == 0
    world.drop("pairs/s1_R2.txt", b"second\nthird\n")
    done = submit_blob(world.gw, world.names["input"], "pairs/s1_R2.txt")
    submit_blob(world.gw, world.names["input"], "pairs/s1_R2.txt")  # delivered twice
    submit_blob(world.gw, world.names["input"], "pairs/s1_R1.txt")
    sweep(world.gw)
    assert task_requests(world) - before == 1
    assert [task for task in group_tasks(world) if task.startswith("s1-g-")] == [done.task_id]
    manifest = world.run_until_manifests(["pairs/s1"])["pairs/s1"]
    assert manifest["status"] == "succeeded" and manifest["group"] == "pairs/s1"
    assert [m["name"] for m in manifest["members"]] == ["pairs/s1_R1.txt", "pairs/s1_R2.txt"]  # type: ignore[attr-defined, index]
    assert results_text(world, "pairs/s1/joined.txt") == "first\nsecond\nthird\n"
    summary = json.loads(results_text(world, "pairs/s1/summary.json"))
    assert summary == {"group": "pairs_s1", "members": 2, "lines": {"s1_R1.txt": 1, "s1_R2.txt": 2}}
    shown = status(world.gw)["groups"]
    assert shown["duplicates"] >= 2  # type: ignore[index]


def test_member_reuploaded_after_the_group_ran_reruns_it_once(world: PipelineWorld) -> None:
    world.drop("pairs/s2_R1.txt", b"a\n")
    world.drop("pairs/s2_R2.txt", b"b\n")
    sweep(world.gw)
    first = world.run_until_manifests(["pairs/s2"])["pairs/s2"]
    before = task_requests(world)
    world.drop("pairs/s2_R1.txt", b"A again\n")
    again = submit_blob(world.gw, world.names["input"], "pairs/s2_R1.txt")
    submit_blob(world.gw, world.names["input"], "pairs/s2_R1.txt")
    sweep(world.gw)
    assert task_requests(world) - before == 1
    assert again.task_id != first["task_id"]
    reruns = [task for task in group_tasks(world) if task.startswith("s2-g-")]
    assert reruns == sorted([again.task_id, str(first["task_id"])])

    def republished() -> bool:
        world.drain_completions()
        manifest = world.manifest("pairs/s2")
        return manifest is not None and manifest["task_id"] == again.task_id

    wait_until(republished, 90, interval=0.3, what="the re-run group's manifest")
    assert results_text(world, "pairs/s2/joined.txt") == "A again\nb\n"
    group = world.gw.ledger.get_group(world.gw.pipelines.pipelines[0].name, "pairs/s2")
    assert group is not None and group.runs == 2 and group.late == ["pairs/s2_R1.txt"]


def test_incomplete_group_fails_after_its_timeout_naming_the_missing_member(world: PipelineWorld) -> None:
    world.drop("solo/s3_R1.txt", b"alone\n")
    before = task_requests(world)
    sweep(world.gw)

    def failed() -> bool:
        return sweep(world.gw).groups_failed == 1 or world.manifest("solo/s3") is not None

    wait_until(failed, 30, interval=0.5, what="the group's timeout")
    manifest = world.manifest("solo/s3")
    assert manifest is not None and manifest["status"] == "failed"
    assert manifest["missing"] == ["solo/s3_R2.txt"]
    assert "solo/s3_R2.txt" in str(manifest["failure"])
    published = world.container("results").get_blob_client("solo/s3/_manifest.json")
    written = published.get_blob_properties().etag
    sweep(world.gw)
    assert published.get_blob_properties().etag == written  # failed once, not again
    assert task_requests(world) - before == 0


@pytest.mark.parametrize(
    # (a member name with a `..` segment of its own, `pairs/../x_R1.txt`, is refused by storage before any event)
    "key", ["pairs/..", "pairs/_history", "pairs//x", "pairs/" + "k" * 900, "pairs/$(id); 'q' `x`"]
)
def test_hostile_group_keys_publish_under_their_escaped_folder(world: PipelineWorld, key: str) -> None:
    for suffix in ("_R1.txt", "_R2.txt"):
        world.drop(key + suffix, b"x\n")
    sweep(world.gw)
    prefix = ids.result_prefix(key)
    manifest = world.run_until_manifests([key])[key]
    assert manifest["status"] == "succeeded" and manifest["group"] == key
    outputs = [str(name) for name in manifest["outputs"]]  # type: ignore[attr-defined]
    assert outputs == [prefix + "joined.txt", prefix + "summary.json"]
    assert prefix.startswith(("pairs/", "_long-names/")) and "/../" not in "/" + prefix
