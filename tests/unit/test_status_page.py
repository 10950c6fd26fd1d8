"""The status page's listing over the fakes: newest first, pages, filters, failures with their stderr, links."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.collect import collect
from shared.poll import poll
from shared.status_page import BadQuery, RecentQuery, page_html, recent_inputs, result_url
from shared.submit import submit
from tests.unit.fakes import World, make_world
from tests.unit.test_poll_collect import run_task


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def finish(world: World, name: str, exit_code: int = 0, stderr: bytes = b"") -> None:
    outcome = submit(world.gw, world.blobs.put("input", name))
    run_task(world, outcome, exit_code, stderr)
    poll(world.gw)
    for event in world.queue.drain():
        collect(world.gw, event)


def listing(world: World, **query: object) -> list[tuple[str, str]]:
    inputs = recent_inputs(world.gw, RecentQuery(**query))["inputs"]  # type: ignore[arg-type]
    assert isinstance(inputs, list)
    return [(entry["name"], entry["state"]) for entry in inputs]


def test_inputs_are_listed_newest_first_with_their_outcome_once_each(world: World) -> None:
    finish(world, "a.txt")
    finish(world, "b.txt", exit_code=2, stderr=b"".join(b"line %d\n" % i for i in range(40)) + b"Traceback: boom\n")
    submit(world.gw, world.blobs.put("input", "c.txt"))
    assert listing(world) == [("c.txt", "queued"), ("b.txt", "failed"), ("a.txt", "succeeded")]
    failed = recent_inputs(world.gw, RecentQuery(state="failed"))["inputs"][0]  # type: ignore[index]
    assert failed["exit_code"] == 2 and failed["failure"] is not None
    assert failed["stderr_tail"].splitlines()[-1] == "Traceback: boom" and len(failed["stderr_tail"].splitlines()) == 20
    succeeded = recent_inputs(world.gw, RecentQuery(state="succeeded"))["inputs"][0]  # type: ignore[index]
    assert [link["name"] for link in succeeded["outputs"]] == ["report.json", "sub/preview.txt"]
    assert succeeded["stderr"]["path"] == "a.txt/_logs/stderr.txt"


def test_pages_follow_the_cursor_and_the_filters_combine(world: World) -> None:
    for i in range(5):
        finish(world, f"x/{i}.txt", exit_code=i % 2)
    finish(world, "y.txt")
    first = recent_inputs(world.gw, RecentQuery(limit=4, prefix="x/"))
    assert [entry["name"] for entry in first["inputs"]] == ["x/4.txt", "x/3.txt", "x/2.txt", "x/1.txt"]  # type: ignore[attr-defined]
    second = recent_inputs(world.gw, RecentQuery(limit=4, prefix="x/", after=str(first["next"])))
    assert [entry["name"] for entry in second["inputs"]] == ["x/0.txt"] and second["next"] is None  # type: ignore[attr-defined]
    assert listing(world, prefix="x/", state="failed") == [("x/3.txt", "failed"), ("x/1.txt", "failed")]
    assert listing(world, state="queued") == []


def test_a_rejected_input_is_listed_with_its_reason(world: World) -> None:
    submit(world.gw, world.blobs.put("input", "bad."))
    (entry,) = recent_inputs(world.gw, RecentQuery())["inputs"]  # type: ignore[misc]
    assert entry["state"] == "rejected" and entry["reason"]


@pytest.mark.parametrize(
    ("params", "named"),
    [({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"), ({"state": "lost"}, "state"), ({"after": "abc"}, "after")],
)
def test_a_bad_listing_parameter_is_refused_naming_it(params: dict[str, str], named: str) -> None:
    with pytest.raises(BadQuery, match=named):
        RecentQuery.parse(params)


def test_a_result_link_is_for_an_existing_result_blob_only(world: World) -> None:
    finish(world, "a.txt")
    assert result_url(world.gw, "a.txt/report.json") is not None
    assert result_url(world.gw, "a.txt/nothing.json") is None
    assert result_url(world.gw, "") is None


def test_the_page_allows_only_its_own_inline_script_and_style() -> None:
    document, policy = page_html()
    nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
    assert f'<script nonce="{nonce}">' in document and f'<style nonce="{nonce}">' in document
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert not any(sink in document for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"))
    assert page_html()[1] != policy  # a nonce per response
