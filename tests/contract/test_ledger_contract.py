"""One set of cases for the ledger fake and the Table ledger on Azurite: the same results, the same exceptions.

The unit tests trust FakeLedger to behave like TableLedger; these cases are where that trust is checked.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from azure.data.tables import TableClient

from shared import ids
from shared.errors import TransientError
from shared.ledger import TableLedger
from shared.ledger_rows import input_partition
from shared.models import (
    FinalKey,
    GroupMember,
    GroupRecord,
    GroupState,
    InputRecord,
    InputState,
    JobRecord,
    JobState,
    ScheduleRecord,
)
from shared.ports import LedgerPort
from tests.unit.fakes import FakeLedger

WINDOW_END = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)


@pytest.fixture(params=["fake", "table"])
def ledger(request: pytest.FixtureRequest) -> Iterator[LedgerPort]:
    if request.param == "fake":
        yield FakeLedger()
        return
    request.applymarker(pytest.mark.integration)
    azurite = request.getfixturevalue("azurite")
    table = f"contract{request.getfixturevalue('namespace')}"
    yield TableLedger(TableClient.from_connection_string(azurite.connection_string, table))
    TableClient.from_connection_string(azurite.connection_string, table).delete_table()


def row(state: InputState, task_id: str = "t-1", job_id: str = "job-1", **fields: object) -> InputRecord:
    return InputRecord(task_id, "input", f"{task_id}.txt", "0x1", "report", job_id, state, **fields)  # type: ignore[arg-type]


def collected(outcome: str = "succeeded") -> FinalKey:
    return FinalKey(InputState.COLLECTED, "report", outcome)


def test_a_second_claim_returns_the_stored_row_and_created_false(ledger: LedgerPort) -> None:
    first = row(InputState.CLAIMED)
    assert ledger.claim_input(first) == (first, True)
    stored, created = ledger.claim_input(row(InputState.CLAIMED, job_id="job-2"))
    assert not created and stored.job_id == "job-1"
    assert ledger.get_input("t-1") == stored
    assert ledger.get_input("t-unknown") is None


@pytest.mark.parametrize("final", [InputState.COLLECTED, InputState.SKIPPED, InputState.REJECTED])
def test_save_input_never_moves_a_row_out_of_a_final_state(ledger: LedgerPort, final: InputState) -> None:
    ledger.claim_input(row(final, outcome="succeeded"))
    told = ledger.save_input(row(InputState.SUBMITTED, reactivations=1))
    assert told.state is final and told.reactivations == 0  # the writer learns what the row says
    ledger.save_inputs([row(InputState.CLAIMED), row(InputState.SUBMITTED, "t-2")])
    stored = {record.task_id: record.state for record in ledger.inputs()}
    assert stored == {"t-1": final, "t-2": InputState.SUBMITTED}
    assert ledger.save_input(row(InputState.COLLECTED, outcome="failed")).state is InputState.COLLECTED


def test_a_save_made_from_a_stale_read_does_not_undo_a_collection(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.SUBMITTED))
    stale = ledger.get_input("t-1")
    assert stale is not None
    ledger.save_input(row(InputState.COLLECTED, outcome="succeeded"))  # another collector, after our read
    stale.reactivations += 1

    stored = ledger.save_input(stale)

    assert stored.state is InputState.COLLECTED and stored.outcome == "succeeded"
    found = ledger.get_input("t-1")
    assert found is not None and found.state is InputState.COLLECTED and found.reactivations == 0


def test_counters_count_each_final_input_once(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.REJECTED, "r-1", job_id="", reason="bad name"))
    ledger.claim_input(row(InputState.REJECTED, "r-1", job_id="", reason="bad name"))  # a redelivery
    ledger.claim_input(row(InputState.SKIPPED, "s-1", job_id=""))
    for task_id in ("t-1", "t-2", "t-3"):
        ledger.claim_input(row(InputState.CLAIMED, task_id))
    ledger.save_inputs([row(InputState.SUBMITTED, task_id) for task_id in ("t-1", "t-2", "t-3")])
    assert ledger.counts().by_job.get("job-1", Counter()) == Counter()  # nothing final yet

    ledger.save_input(row(InputState.COLLECTED, "t-1", outcome="succeeded"))
    ledger.save_input(row(InputState.COLLECTED, "t-1", outcome="succeeded"))  # two collectors, one input
    ledger.save_input(row(InputState.COLLECTED, "t-2", outcome="succeeded"))
    ledger.save_input(row(InputState.COLLECTED, "t-2", outcome="failed"))  # a later word on the same input
    ledger.save_inputs([row(InputState.COLLECTED, "t-3", outcome="superseded"), row(InputState.SUBMITTED, "t-1")])

    counts = ledger.counts()
    assert counts.by_job["job-1"] == Counter({collected(): 1, collected("failed"): 1, collected("superseded"): 1})
    assert counts.by_job[""] == Counter(
        {FinalKey(InputState.REJECTED, "report"): 1, FinalKey(InputState.SKIPPED, "report"): 1}
    )
    assert counts.deleted_jobs == 0 and counts.deleted == Counter()


def test_a_row_replaced_by_a_rerun_keeps_its_first_rerun_by_and_leaves_the_counts(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.COLLECTED, outcome="failed"))
    ledger.save_input(row(InputState.RERUN, outcome="failed", rerun_by="t-r-1"))
    late = ledger.save_input(row(InputState.RERUN, outcome="failed", rerun_by="t-r-2"))  # a second re-run request
    assert (late.state, late.rerun_by) == (InputState.RERUN, "t-r-1")
    assert ledger.save_input(row(InputState.COLLECTED, outcome="failed")).state is InputState.RERUN  # a late collector
    ledger.claim_input(row(InputState.CLAIMED, "t-r-1", "job-2", run=2, rerun_of="t-1"))
    ledger.save_input(row(InputState.COLLECTED, "t-r-1", "job-2", outcome="succeeded", run=2, rerun_of="t-1"))
    rerun = ledger.get_input("t-r-1")
    assert rerun is not None and (rerun.run, rerun.rerun_of) == (2, "t-1")
    counts = ledger.counts().by_job
    assert counts["job-2"] == Counter({collected("succeeded"): 1})
    assert +counts.get("job-1", Counter()) == Counter({FinalKey(InputState.RERUN, "report", "failed"): 1})


def test_jobs_claim_save_and_retire(ledger: LedgerPort) -> None:
    job = JobRecord("job-1", "report", WINDOW_END, recent_task_ids=["t-1"])
    assert ledger.claim_job(job) == (job, True)
    again, created = ledger.claim_job(JobRecord("job-1", "other", WINDOW_END))
    assert not created and again.pipeline == "report" and again.recent_task_ids == ["t-1"]
    assert ledger.get_job("job-unknown") is None
    ledger.claim_job(JobRecord("job-2", "report", WINDOW_END))
    for task_id in ("t-1", "t-2"):
        ledger.claim_input(row(InputState.COLLECTED, task_id, outcome="succeeded"))
    ledger.claim_input(row(InputState.COLLECTED, "t-3", job_id="job-2", outcome="failed"))

    job.state, job.terminated_at = JobState.TERMINATED, WINDOW_END
    ledger.save_job(job)
    assert [j.job_id for j in ledger.jobs()] == ["job-2"]
    assert sorted(j.job_id for j in ledger.jobs(active_only=False)) == ["job-1", "job-2"]

    ledger.retire_job(job)
    ledger.retire_job(job)  # a poll that crashed after retiring it does so again: counted once

    assert [j.job_id for j in ledger.jobs(active_only=False)] == ["job-2"]
    retired = ledger.get_job("job-1")
    assert retired is not None and retired.state is JobState.DELETED and retired.terminated_at == WINDOW_END
    counts = ledger.counts()
    assert counts.deleted_jobs == 1 and counts.deleted == Counter({collected(): 2})
    assert "job-1" not in counts.by_job and counts.by_job["job-2"] == Counter({collected("failed"): 1})


def test_a_jobs_summary_state_is_kept_on_its_row(ledger: LedgerPort) -> None:
    job = JobRecord("job-1", "report", WINDOW_END)
    ledger.claim_job(job)
    assert ledger.get_job("job-1").summary == ""  # type: ignore[union-attr]
    for step in ("pending", "running", "succeeded"):
        job.summary = step
        ledger.save_job(job)
        assert ledger.get_job("job-1").summary == step  # type: ignore[union-attr]
        assert [j.summary for j in ledger.jobs()] == [step]


def test_rejections_newest_first_and_bounded(ledger: LedgerPort) -> None:
    for index in range(5):
        ledger.record_rejection(f"input/{index}", f"reason {index}")
    found = ledger.rejections(limit=3)
    assert [r["input"] for r in found] == ["input/4", "input/3", "input/2"]
    assert all(r["reason"].startswith("reason") and datetime.fromisoformat(r["at"]) for r in found)


def test_rows_spread_over_partitions_and_every_read_finds_them(ledger: LedgerPort) -> None:
    task_ids = [f"t-{index:03}" for index in range(120)]
    assert len({input_partition(task_id) for task_id in task_ids}) == 16
    ledger.save_inputs([row(InputState.SUBMITTED, task_id, job_id=f"job-{index % 2}") for index, task_id in
                        enumerate(task_ids)])  # fmt: skip
    ledger.claim_input(row(InputState.CLAIMED, "t-new"))
    ledger.save_input(row(InputState.COLLECTED, "t-000", job_id="job-0", outcome="succeeded"))

    assert all(ledger.get_input(task_id) is not None for task_id in task_ids)
    assert ledger.known_task_ids() == set(task_ids)  # counter rows are not inputs, claimed rows not known
    assert len(ledger.inputs(job_id="job-1")) == 61  # and the claimed one
    assert [r.task_id for r in ledger.inputs(state=InputState.COLLECTED)] == ["t-000"]
    assert len(ledger.inputs(state=InputState.SUBMITTED, job_id="job-0")) == 59


def unreachable_ledger() -> TableLedger:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connection = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    return TableLedger(TableClient.from_connection_string(connection, "ledger", retry_total=0))


def unavailable_fake() -> FakeLedger:
    fake = FakeLedger()
    fake.unavailable = True
    return fake


CALLS: dict[str, Callable[[LedgerPort], object]] = {
    "claim_input": lambda store: store.claim_input(row(InputState.CLAIMED)),
    "claim_inputs": lambda store: store.claim_inputs([row(InputState.CLAIMED), row(InputState.CLAIMED, "t-2")]),
    "get_input": lambda store: store.get_input("t-1"),
    "save_input": lambda store: store.save_input(row(InputState.COLLECTED, outcome="succeeded")),
    "save_inputs": lambda store: store.save_inputs([row(InputState.SUBMITTED)]),
    "inputs": lambda store: store.inputs(),
    "known_task_ids": lambda store: store.known_task_ids(),
    "counts": lambda store: store.counts(),
    "get_job": lambda store: store.get_job("job-1"),
    "claim_job": lambda store: store.claim_job(JobRecord("job-1", "report", WINDOW_END)),
    "save_job": lambda store: store.save_job(JobRecord("job-1", "report", WINDOW_END)),
    "retire_job": lambda store: store.retire_job(JobRecord("job-1", "report", WINDOW_END)),
    "jobs": lambda store: store.jobs(),
    "record_rejection": lambda store: store.record_rejection("input/x", "why"),
    "rejections": lambda store: store.rejections(),
}


@pytest.mark.parametrize("make", [unavailable_fake, unreachable_ledger], ids=["fake", "table"])
@pytest.mark.parametrize("call", CALLS)
def test_every_call_to_an_unreachable_ledger_raises_transient_error(make: Callable[[], LedgerPort], call: str) -> None:
    with pytest.raises(TransientError):
        CALLS[call](make())


def test_recent_lists_each_creation_and_each_move_to_a_final_state_newest_first_in_pages(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.CLAIMED, "t-1"))
    ledger.claim_input(row(InputState.CLAIMED, "t-2"))
    ledger.save_input(row(InputState.SUBMITTED, "t-1"))  # not final: no event
    ledger.save_input(row(InputState.COLLECTED, "t-1", outcome="failed"))
    ledger.save_input(row(InputState.COLLECTED, "t-1", outcome="failed"))  # no change: no second event
    ledger.save_inputs([row(InputState.COLLECTED, "t-2", outcome="succeeded")])
    ledger.claim_input(row(InputState.CLAIMED, "t-1"))  # exists: no event
    first, cursor = ledger.recent(3)
    assert cursor == first[-1].key
    rest, end = ledger.recent(3, cursor)
    assert end is None
    events = first + rest
    assert [entry.key for entry in events] == sorted(entry.key for entry in events)  # newest first: inverted time
    assert sorted((e.task_id, e.state, e.outcome) for e in events) == [
        ("t-1", "claimed", ""), ("t-1", "collected", "failed"),
        ("t-2", "claimed", ""), ("t-2", "collected", "succeeded"),
    ]  # fmt: skip
    assert all(e.name == f"{e.task_id}.txt" and e.job_id == "job-1" and e.pipeline == "report" for e in events)
    collected_first = {e.task_id: i for i, e in reversed(list(enumerate(events)))}
    assert all(events[collected_first[t]].state == "collected" for t in ("t-1", "t-2"))  # a row's newest event leads


def test_a_claimed_inputs_staging_container_finds_its_row(ledger: LedgerPort) -> None:
    from shared import ids

    staging = ids.staging_container("st", "t-1")
    ledger.claim_input(row(InputState.CLAIMED, staging=staging))
    ledger.save_input(row(InputState.SUBMITTED, job_id="job-2", staging=staging))  # moved to another job
    found = ledger.input_for_staging(staging)
    assert found is not None and (found.task_id, found.job_id, found.staging) == ("t-1", "job-2", staging)
    # A second claim of the same input keeps the first row (and its index).
    ledger.claim_input(row(InputState.CLAIMED, job_id="job-3", staging=staging))
    assert ledger.input_for_staging(staging) == ledger.get_input("t-1")
    assert ledger.input_for_staging(ids.staging_container("st", "t-unknown")) is None
    assert ledger.input_for_staging("st-not-a-digest") is None
    assert ledger.input_for_staging("") is None


def test_staging_index_rows_are_neither_inputs_nor_counters(ledger: LedgerPort) -> None:
    from shared import ids

    ledger.claim_input(row(InputState.CLAIMED, staging=ids.staging_container("st", "t-1")))
    ledger.save_input(row(InputState.COLLECTED, outcome="succeeded", staging=ids.staging_container("st", "t-1")))
    assert [record.task_id for record in ledger.inputs()] == ["t-1"]
    assert ledger.known_task_ids() == {"t-1"}
    assert ledger.counts().by_job == {"job-1": Counter({collected(): 1})}


def test_a_schedule_row_is_written_over_the_version_read(ledger: LedgerPort) -> None:
    fired = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    created = ledger.save_schedule(ScheduleRecord("nightly", fired))
    assert created is not None and created.version
    assert ledger.save_schedule(ScheduleRecord("nightly", fired)) is None  # create-only: it exists
    (stored,) = ledger.schedules()
    assert (stored.pipeline, stored.last_fired, stored.firing_since) == ("nightly", fired, None)
    assert stored.version == created.version

    firing = ledger.save_schedule(replace(stored, last_fired=WINDOW_END, firing_since=WINDOW_END))
    assert firing is not None and firing.version != stored.version
    assert ledger.save_schedule(replace(stored, firing_since=WINDOW_END)) is None  # a stale version loses
    cleared = ledger.save_schedule(replace(firing, firing_since=None))
    assert cleared is not None
    assert [(row.last_fired, row.firing_since) for row in ledger.schedules()] == [(WINDOW_END, None)]

    assert not ledger.delete_schedule(firing)  # a stale version deletes nothing
    assert ledger.delete_schedule(cleared)
    assert ledger.schedules() == []
    assert ledger.delete_schedule(cleared)  # gone already: nothing to do


def test_waiting_inputs_are_counted_until_they_are_submitted(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.WAITING))
    ledger.claim_input(row(InputState.WAITING, "t-2"))
    waiting = FinalKey(InputState.WAITING, "report")
    assert ledger.counts().by_job.get("job-1", Counter()) == Counter({waiting: 2})
    ledger.save_inputs([row(InputState.CLAIMED), row(InputState.CLAIMED, "t-2")])
    assert +ledger.counts().by_job.get("job-1", Counter()) == Counter()
    assert {record.state for record in ledger.inputs()} == {InputState.CLAIMED}

def group_row(key: str = "pairs/s1", **members: str) -> GroupRecord:
    seen = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    return GroupRecord(
        "pairs", key, seen, WINDOW_END, {name: GroupMember(etag, seen) for name, etag in members.items()}
    )


def test_update_group_creates_applies_and_writes_nothing_when_told(ledger: LedgerPort) -> None:
    key = "pairs/../weird key #?/\\"  # any key: the row key is a digest of it
    assert ledger.get_group("pairs", key) is None
    created = ledger.update_group("pairs", key, lambda row: row or group_row(key, a="0x1"))
    assert created is not None and created.key == key

    def add_b(row: GroupRecord | None) -> GroupRecord | None:
        assert row is not None
        row.members["b"] = GroupMember("0x2", row.first_seen)
        row.state, row.task_id, row.runs, row.late = GroupState.SUBMITTED, "t-g-1", 1, ["b"]
        return row

    ledger.update_group("pairs", key, add_b)
    assert ledger.update_group("pairs", key, lambda row: None) == ledger.get_group("pairs", key)
    stored = ledger.get_group("pairs", key)
    assert stored is not None and sorted(stored.members) == ["a", "b"] and stored.members["b"].etag == "0x2"
    assert (stored.state, stored.task_id, stored.runs, stored.late) == (GroupState.SUBMITTED, "t-g-1", 1, ["b"])
    assert stored.deadline == WINDOW_END
    assert [g.key for g in ledger.groups(GroupState.SUBMITTED)] == [key] and ledger.groups(GroupState.OPEN) == []


def test_update_group_applies_the_change_again_over_a_concurrent_write(ledger: LedgerPort) -> None:
    ledger.update_group("pairs", "k", lambda row: group_row("k", a="0x1"))
    calls = 0

    def add(name: str) -> Callable[[GroupRecord | None], GroupRecord | None]:
        def change(row: GroupRecord | None) -> GroupRecord | None:
            nonlocal calls
            calls += 1
            assert row is not None
            if name == "b" and calls == 1:  # another member lands between our read and our write
                ledger.update_group("pairs", "k", add("c"))
            row.members[name] = GroupMember("0x9", row.first_seen)
            return row

        return change

    ledger.update_group("pairs", "k", add("b"))
    stored = ledger.get_group("pairs", "k")
    assert stored is not None and sorted(stored.members) == ["a", "b", "c"]  # neither write is lost


def test_group_member_and_group_task_rows_keep_their_fields(ledger: LedgerPort) -> None:
    member = row(InputState.GROUPED, job_id="", reason="group 'k'")
    task = row(InputState.CLAIMED, "t-g", group_key="pairs/k", members=(("pairs/k_R1.txt", "0x1"),))
    ledger.claim_input(member)
    ledger.claim_input(task)
    assert ledger.get_input("t-1") == replace(member, updated_at=ledger.get_input("t-1").updated_at)  # type: ignore[union-attr]
    stored = ledger.get_input("t-g")
    assert stored is not None and (stored.group_key, stored.members) == ("pairs/k", (("pairs/k_R1.txt", "0x1"),))
    assert ledger.counts().by_job[""] == Counter({FinalKey(InputState.GROUPED, "report"): 1})


def test_claim_inputs_claims_in_bulk_in_order_and_tells_which_rows_it_created(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.SUBMITTED, "t-2", job_id="job-0"))  # claimed before: its partition's
    staging = ids.staging_container("st", "t-3")  # transaction is refused and claimed again one row at a time
    records = [
        row(InputState.CLAIMED, "t-1"),
        row(InputState.CLAIMED, "t-2"),
        row(InputState.REJECTED, "r-1", job_id="", reason="bad name"),
        row(InputState.CLAIMED, "t-3", staging=staging),
        *(row(InputState.CLAIMED, f"t-{index}") for index in range(10, 70)),  # several rows per partition
    ]

    results = ledger.claim_inputs(records)

    assert [created for _, created in results] == [True, False, True, True] + [True] * 60
    assert [stored.task_id for stored, _ in results] == [record.task_id for record in records]
    assert (results[1][0].state, results[1][0].job_id) == (InputState.SUBMITTED, "job-0")  # as stored
    assert results[0][0] == records[0]
    found = ledger.input_for_staging(staging)
    assert found is not None and found.task_id == "t-3"
    assert {record.task_id: record.state for record in ledger.inputs()} == {
        record.task_id: InputState.SUBMITTED if record.task_id == "t-2" else record.state for record in records
    }
    assert ledger.counts().by_job[""] == Counter({FinalKey(InputState.REJECTED, "report"): 1})
    events, _ = ledger.recent(100)
    assert sorted(entry.task_id for entry in events) == sorted(record.task_id for record in records)  # t-2: once
    [(again, created)] = ledger.claim_inputs([row(InputState.CLAIMED, "t-1", job_id="job-9")])
    assert not created and replace(again, updated_at=None) == records[0]


def test_a_record_made_from_another_rows_read_is_saved_as_a_row_of_its_own(ledger: LedgerPort) -> None:
    ledger.claim_input(row(InputState.SUBMITTED))
    read = ledger.get_input("t-1")
    assert read is not None
    ledger.save_input(replace(read, task_id="t-2", state=InputState.COLLECTED, outcome="failed"))  # a re-run's row
    first, second = ledger.get_input("t-1"), ledger.get_input("t-2")
    assert first is not None and first.state is InputState.SUBMITTED
    assert second is not None and (second.state, second.outcome) == (InputState.COLLECTED, "failed")
    assert ledger.counts().by_job["job-1"] == Counter({collected("failed"): 1})
