"""The status page in headless Chromium: live progress, a failure's stderr, hostile names shown as text, filters."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from local.stack import PROJECT_ROOT
from tests.browser.conftest import PageStack
from tests.waiting import NotYet, wait_until

pytestmark = pytest.mark.e2e

KEY = "browser-test-key-0123456789"
HOSTILE = ["<script>window.__pwned=1</script>.txt", "<img src=x onerror=window.__pwned=2>.txt"]
SCREENSHOT = PROJECT_ROOT / "docs" / "status-page.png"

ROWS_JS = """
return [...document.querySelectorAll('#recent tr.input')].map(row => ({
  name: row.dataset.name, state: row.dataset.state, shown: row.cells[0].textContent,
  visible: row.cells[0].innerText, exit: row.cells[2].textContent,
  outputs: [...row.querySelectorAll('a.result')].map(a => a.textContent),
  detail: [...document.querySelectorAll('#recent tr.detail-row')]
    .filter(d => d.dataset.detailOf === row.dataset.name).map(d => d.innerText).join('\\n'),
}));
"""


def open_page(driver: Any, stack: PageStack) -> None:
    """Load the page once (with a function key in its address, as on Azure) and mark the document."""
    driver.get(f"{stack.page_url}?code={KEY}&refresh=500")
    wait_until(lambda: int(driver.execute_script("return Number(document.body.dataset.refreshes || 0)")) >= 1,
               30, interval=0.2, what="the page's first refresh")  # fmt: skip
    # A reload would make a new document without this mark: the tests check it is still there at the end.
    driver.execute_script("window.__sameDocument = 'still here'")


def rows(driver: Any) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in driver.execute_script(ROWS_JS)}


def wait_for_row(driver: Any, name: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
    def shown() -> dict[str, Any] | NotYet:
        row = rows(driver).get(name)
        return row if row is not None and row["state"] in states else NotYet(row)

    return wait_until(shown, timeout, interval=0.2, what=f"{name!r} shown as {sorted(states)}")


def same_document(driver: Any) -> bool:
    return driver.execute_script("return window.__sameDocument") == "still here"


def test_a_dropped_file_goes_from_queued_to_succeeded_without_a_reload(browser: Any, page_stack: PageStack) -> None:
    open_page(browser, page_stack)
    page_stack.drop("gated/first.txt", b"held at the gate\n")
    wait_for_row(browser, "gated/first.txt", {"queued"})  # the task waits for the gate: queued is seen for sure
    (page_stack.gate_dir / "open").touch()
    row = wait_for_row(browser, "gated/first.txt", {"succeeded"})
    assert same_document(browser), "the page reloaded instead of refreshing in place"
    assert row["exit"] == "0" and "gated.txt" in row["outputs"]
    pipelines = browser.execute_script(
        "return [...document.querySelectorAll('#pipelines tbody tr')].map(r => r.dataset.pipeline)")
    assert {"report", "gated"} <= set(pipelines)
    jobs = browser.execute_script("return [...document.querySelectorAll('#jobs .badge')].map(b => b.textContent)")
    assert jobs and set(jobs) <= {"open", "closing", "terminated"}
    assert KEY not in browser.page_source, "the function key stands in the page"


def test_a_failed_file_shows_its_reason_and_the_end_of_its_stderr(browser: Any, page_stack: PageStack) -> None:
    open_page(browser, page_stack)
    page_stack.drop("broken.txt", b"#fail\nthis one fails on purpose\n")
    row = wait_for_row(browser, "broken.txt", {"failed"})
    assert row["exit"] == "3"
    assert "starts with the line '#fail', so this task fails on purpose" in row["detail"]  # the stderr tail
    assert "_logs/stderr.txt" in row["outputs"]
    # Its stderr link goes through the app (api/results/…), which answers with a short read-only link to the blob.
    link = browser.execute_script("""const a = [...document.querySelectorAll('#recent tr.input')]
        .find(r => r.dataset.name === 'broken.txt').querySelector('a.result[title$="_logs/stderr.txt"]');
        return {href: a.getAttribute('href'), path: a.title}""")
    assert link == {"href": "#", "path": "broken.txt/_logs/stderr.txt"}  # the URL is made at click time
    base = page_stack.page_url.rsplit("/", 1)[0]
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(f"{base}/results/{link['path']}", timeout=30)
    assert redirect.value.code == 302
    target = redirect.value.headers["Location"]
    assert "sig=" in target and target.split("?")[0].endswith("/results/broken.txt/_logs/stderr.txt")
    assert b"fails on purpose" in urllib.request.urlopen(target, timeout=30).read()
    assert "sig=" not in browser.page_source
    assert same_document(browser)


def test_hostile_names_are_shown_as_text_and_run_nothing(browser: Any, page_stack: PageStack) -> None:
    open_page(browser, page_stack)
    for name in HOSTILE:
        page_stack.drop(name, b"hostile name, harmless content\n")
    shown = [wait_for_row(browser, name, {"succeeded", "failed", "rejected", "skipped"}) for name in HOSTILE]
    for name, row in zip(HOSTILE, shown, strict=True):
        assert row["shown"] == name and row["visible"] == name  # as text, and visible as such
    assert browser.execute_script("return typeof window.__pwned") == "undefined", "a hostile name ran as script"
    assert browser.execute_script("return document.querySelectorAll('main img, main script').length") == 0
    # The second line of defence: markup that did get in runs no inline handler under the page's policy.
    browser.execute_script("document.getElementById('updated').insertAdjacentHTML('beforeend', arguments[0])",
                           "<img src=x onerror=\"window.__pwned=3\">")  # fmt: skip
    wait_until(lambda: browser.execute_script("return document.querySelector('#updated img').complete"), 10,
               interval=0.1, what="the injected image to fail loading")  # fmt: skip
    assert browser.execute_script("return typeof window.__pwned") == "undefined", "the CSP let an inline handler run"
    assert same_document(browser)


def test_the_filter_by_name_prefix_and_by_state(browser: Any, page_stack: PageStack) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    for name, data in (("filter/a.txt", b"a\n"), ("filter/b.txt", b"#fail\nb\n"), ("other.txt", b"c\n")):
        page_stack.drop(name, data)
    open_page(browser, page_stack)
    wait_for_row(browser, "other.txt", {"succeeded"})
    wait_for_row(browser, "filter/b.txt", {"failed"})
    browser.find_element(By.ID, "prefix").send_keys("filter/")

    def only(expected: set[str]) -> set[str] | NotYet:
        names = set(rows(browser))
        return names if names == expected else NotYet(sorted(names))

    wait_until(lambda: only({"filter/a.txt", "filter/b.txt"}), 20, interval=0.2, what="the prefix filter")
    Select(browser.find_element(By.ID, "state")).select_by_value("failed")
    wait_until(lambda: only({"filter/b.txt"}), 20, interval=0.2, what="prefix and state filters together")
    browser.find_element(By.ID, "prefix").clear()
    browser.execute_script("document.getElementById('prefix').dispatchEvent(new Event('input'))")
    wait_until(lambda: only({"filter/b.txt", "broken.txt"}), 20, interval=0.2, what="the state filter alone")
    assert same_document(browser)


def test_a_screenshot_of_the_demo_data(browser: Any, page_stack: PageStack, tmp_path: Path) -> None:
    """A picture of the page with the samples dropped; BATCHDROP_UPDATE_SCREENSHOT=1 writes docs/status-page.png."""
    samples = PROJECT_ROOT / "samples"
    for name in ("hello.txt", "webserver.log", "fail-on-purpose.txt"):
        page_stack.drop(name, (samples / name).read_bytes())
    browser.set_window_size(1440, 1300)
    open_page(browser, page_stack)
    for name in ("hello.txt", "webserver.log", "fail-on-purpose.txt"):
        wait_for_row(browser, name, {"succeeded", "failed"})
    picture = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("BATCHDROP_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(picture, SCREENSHOT)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


STATUS_OPERATIONS = ("Job_GetTaskCounts", "Pool_Get", "Account_ListPoolNodeCounts")


def test_one_page_view_asks_batch_per_active_job_and_pool_only(browser: Any, page_stack: PageStack) -> None:
    """What the page's refresh asks of Batch, counted by the emulator (the host's poll timer runs meanwhile, so
    the operations that only the status call makes are counted): the listing asks nothing."""
    browser.get("about:blank")  # an open page refreshes on its own: this test makes the page's requests itself
    emulator = page_stack.stack.emulator
    base = page_stack.page_url.rsplit("/", 1)[0]

    def asked() -> dict[str, int]:
        requests = emulator.stats()["requests"]
        assert isinstance(requests, dict)
        return {operation: int(requests.get(operation, 0)) for operation in STATUS_OPERATIONS}

    def listing_alone() -> bool | NotYet:
        emulator.reset_stats()
        urllib.request.urlopen(f"{base}/recent?limit=50", timeout=30).read()
        seen = asked()
        return sum(seen.values()) == 0 or NotYet(seen)

    def status_alone() -> bool | NotYet:
        emulator.reset_stats()
        status = json.loads(urllib.request.urlopen(f"{base}/status", timeout=30).read())
        active = sum(1 for job in status["jobs"] if job["state"] == "active")
        pools = len(status["pools"])
        expected = {"Job_GetTaskCounts": active, "Pool_Get": pools, "Account_ListPoolNodeCounts": int(pools > 0)}
        seen = asked()
        return seen == expected or NotYet((seen, expected))

    # A request of the page that was open before (in flight when it went) may land in a window: measure again.
    wait_until(listing_alone, 20, interval=0.5, what="a listing that asks Batch nothing")
    wait_until(status_alone, 20, interval=0.5, what="a status call that asks Batch per active job and pool")
