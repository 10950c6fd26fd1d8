"""Output names a task chooses: nothing it writes lands outside its input's results folder or poses as a manifest."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest

from shared import ids
from shared.collect import collect
from shared.models import CompletionEvent, InputState
from shared.submit import SubmitOutcome, submit
from tests.unit.fakes import World, make_world

# What a task can create with its write SAS (percent-encoded on the wire, stored as written), and why each is
# refused.
UNSAFE = {
    "../victim.txt/_manifest.json": "'..'",
    "../../x": "'..'",
    "sub/../../x": "'..'",
    "./x": "'.'",
    "sub/.": "'.'",
    "/abs": "empty path segment",
    "a//b": "empty path segment",
    "trailing/": "empty path segment",
    "...": "'...'",
    ". ./x": "'. .'",
    "..\\x": "'..'",
    "x.": "ends with '.'",
    "_manifest.json": "batchdrop's manifests",
    "sub/_manifest.json": "batchdrop's manifests",  # the manifest of an input named a.txt/sub
    "_logs/stderr.txt": "task's logs",
}
SAFE = ["report.json", "sub/preview.txt", "..x/..y", ".hidden", "a..b", "%2E%2E/x", "%../x", "_manifest.json.bak"]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def run_task(world: World, outcome: SubmitOutcome, outputs: dict[str, bytes]) -> None:
    staging = ids.staging_container("staging", outcome.task_id)
    for name, data in outputs.items():
        world.blobs.put(staging, name, data)
    world.blobs.put(staging, "logs/stdout.txt", b"ok")
    world.blobs.put(staging, "logs/stderr.txt", b"")
    world.batch.finish(outcome.job_id, outcome.task_id, 0)


def manifest_of(world: World, name: str) -> dict[str, object]:
    document = json.loads(world.blobs.text("results", ids.result_prefix(name) + "_manifest.json"))
    assert isinstance(document, dict)
    return document


@pytest.mark.parametrize(("name", "why"), UNSAFE.items())
def test_an_unsafe_output_name_is_refused_and_fails_the_manifest_naming_it(world: World, name: str, why: str) -> None:
    victim = submit(world.gw, world.blobs.put("input", "victim.txt"))
    run_task(world, victim, {"out/report.json": b"victim's"})
    collect(world.gw, CompletionEvent(victim.job_id, victim.task_id))
    victim_results = dict(world.blobs.containers["results"])
    forged = json.dumps({"task_id": "", "status": "succeeded", "outputs": ["forged"]}).encode()
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome, {"out/report.json": b"mine", f"out/{name}": forged})

    assert collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id)).action == "published"

    manifest = manifest_of(world, "a.txt")
    assert manifest["task_id"] == outcome.task_id and manifest["status"] == "failed"
    failure = manifest["failure"]
    assert isinstance(failure, dict) and failure["code"] == "UnsafeOutputName"
    assert f"out/{name}" in str(failure["message"]) and why in str(failure["message"])
    assert list(manifest["refused_outputs"]) == [f"out/{name}"]  # type: ignore[call-overload]
    assert manifest["outputs"] == ["a.txt/report.json"]  # what was safe is still published
    assert world.blobs.text("results", "a.txt/report.json") == "mine"
    published = [blob for blob in world.blobs.containers["results"] if blob not in victim_results]
    assert sorted(published) == [
        "a.txt/_logs/stderr.txt",
        "a.txt/_logs/stdout.txt",
        "a.txt/_manifest.json",
        "a.txt/report.json",
    ]
    for blob, content in victim_results.items():  # another input's results are untouched
        assert world.blobs.containers["results"][blob] == content
    assert world.ledger.input_rows[outcome.task_id].state is InputState.COLLECTED


def test_a_task_cannot_forge_its_own_manifest(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    forged = {"task_id": outcome.task_id, "status": "succeeded", "outputs": ["a.txt/forged"], "input": "a.txt"}
    run_task(world, outcome, {"out/_manifest.json": json.dumps(forged).encode()})

    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    manifest = manifest_of(world, "a.txt")
    assert manifest["status"] == "failed" and manifest["outputs"] == []
    assert "out/_manifest.json" in str(manifest["failure"])


def test_ordinary_names_with_dots_and_percents_are_published_as_written(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome, {f"out/{name}": name.encode() for name in SAFE})

    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    manifest = manifest_of(world, "a.txt")
    assert manifest["status"] == "succeeded" and manifest["refused_outputs"] == {}
    assert manifest["outputs"] == sorted(f"a.txt/{name}" for name in SAFE)
    for name in SAFE:
        assert world.blobs.text("results", f"a.txt/{name}") == name


def test_a_failed_task_keeps_its_own_failure_and_still_lists_what_was_refused(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    world.blobs.put(ids.staging_container("staging", outcome.task_id), "out/../b.txt/x", b"x")
    world.batch.finish(outcome.job_id, outcome.task_id, 3)

    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    manifest = manifest_of(world, "a.txt")
    assert manifest["status"] == "failed" and manifest["failure"]["code"] == "FailureExitCode"  # type: ignore[index]
    assert list(manifest["refused_outputs"]) == ["out/../b.txt/x"]  # type: ignore[call-overload]


def test_log_names_are_held_to_the_same_rules(world: World) -> None:
    outcome = submit(world.gw, world.blobs.put("input", "a.txt"))
    run_task(world, outcome, {"logs/../../victim.txt/_manifest.json": b"{}", "logs/_manifest.json": b"{}"})

    collect(world.gw, CompletionEvent(outcome.job_id, outcome.task_id))

    manifest = manifest_of(world, "a.txt")
    assert sorted(manifest["refused_outputs"]) == ["logs/../../victim.txt/_manifest.json", "logs/_manifest.json"]  # type: ignore[call-overload]
    assert sorted(world.blobs.containers["results"]) == [
        "a.txt/_logs/stderr.txt",
        "a.txt/_logs/stdout.txt",
        "a.txt/_manifest.json",
    ]


@pytest.mark.parametrize("name", list(UNSAFE))
def test_every_unsafe_name_is_refused_with_its_reason(name: str) -> None:
    with pytest.raises(ids.UnsafeName, match=UNSAFE[name].replace(".", r"\.")):
        ids.output_result_name("a.txt/", name)


@pytest.mark.parametrize("prefix", ["a.txt/", "dir/%../b/", "%/", "_long-names/" + "0" * 40 + "/"])
@pytest.mark.parametrize("name", SAFE)
def test_a_published_name_stays_a_plain_name_inside_its_inputs_folder(prefix: str, name: str) -> None:
    published = ids.output_result_name(prefix, name)
    assert published == prefix + name
    assert posixpath.normpath(published) == published
    assert ids.log_result_name(prefix, "stdout.txt") == prefix + "_logs/stdout.txt"


def test_a_result_name_longer_than_azure_allows_is_refused() -> None:
    prefix = ids.result_prefix("d/" + "x" * 690)
    with pytest.raises(ids.UnsafeName, match="Azure allows 1024"):
        ids.output_result_name(prefix, "y" * (ids.MAX_BLOB_NAME - len(prefix) + 1))
    assert len(ids.output_result_name(prefix, "y" * (ids.MAX_BLOB_NAME - len(prefix)))) == ids.MAX_BLOB_NAME


def test_the_invariant_holds_apart_from_the_rules() -> None:
    # result_prefix never makes such a prefix; if anything ever did, nothing would be published below it.
    with pytest.raises(AssertionError, match="would not stay"):
        ids.output_result_name("a.txt/../", "x")
