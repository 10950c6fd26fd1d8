"""The emulated Batch account: the facade the HTTP server calls, over the backend in `local/batch/backend/`.

One lock guards all state (backend/state.py). HTTP handlers call the public methods here; a dispatcher
thread (backend/scheduler.py) assigns active tasks to free node slots and a bounded worker pool runs
them (backend/execution.py, runner.py), so at most `sum(nodes x taskSlotsPerNode)` task processes run
at once and no thread is spawned per task. Disk work that may take long (removing task trees,
compacting the journal) runs on a housekeeping thread, never under the lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from local.batch import odata, runner
from local.batch.backend import listing, recovery
from local.batch.backend.execution import Execution
from local.batch.backend.housekeeping import RemoveTree, remove_tree
from local.batch.backend.jobs import Jobs
from local.batch.backend.pools import Pools
from local.batch.backend.records import Doc
from local.batch.backend.scheduler import Scheduler
from local.batch.backend.state import State
from local.batch.backend.tasks import Tasks

__all__ = ["BatchService", "Doc"]


class BatchService:
    """State and behaviour of one emulated Batch account."""

    def __init__(
        self,
        state_dir: Path,
        account_name: str,
        *,
        packages_dir: Path | None = None,
        auto_storage_connection_string: str | None = None,
        job_quota: int | None = None,
        persist: bool = True,
        task_start_delay_ms: float = 0.0,
        remove_tree: RemoveTree = remove_tree,
        autoscale_interval_seconds: float | None = None,
        completion_lag_seconds: float = 0.0,
    ) -> None:
        self.state = State(
            state_dir,
            account_name,
            packages_dir=packages_dir,
            auto_storage_connection_string=auto_storage_connection_string,
            job_quota=job_quota,
            persist=persist,
            task_start_delay_ms=task_start_delay_ms,
            remover=remove_tree,
            completion_lag_seconds=completion_lag_seconds,
        )
        self.pools = Pools(self.state, autoscale_interval_seconds)
        self.jobs = Jobs(self.state, self.pools)
        self.tasks = Tasks(self.state)
        self.execution = Execution(self.state, self.jobs)
        self.scheduler = Scheduler(self.state, self.pools, self.jobs, self.execution)

    @property
    def account_url(self) -> str:
        return self.state.account_url

    @account_url.setter
    def account_url(self, url: str) -> None:
        self.state.account_url = url

    @property
    def account_name(self) -> str:
        return self.state.account_name

    @property
    def state_dir(self) -> Path:
        return self.state.state_dir

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        state = self.state
        state.state_dir.mkdir(parents=True, exist_ok=True)
        with state.lock:
            state.journal.open(recovery.recover(state, self.pools, state.journal.load()))
        state.housekeeper.start()
        self.scheduler.start()

    def stop(self) -> None:
        """Kill every running task's process tree and stop scheduling (state stays as it is)."""
        state = self.state
        with state.lock:
            state.stopping = True
            pids = [run.process_pid for run in state.runs.values() if run.process_pid]
            pids += list(state.start_task_pids.values())
            state.wakeup.notify_all()
        for pid in pids:
            runner.kill_tree(pid)
        state.executor.shutdown(wait=False, cancel_futures=True)
        state.housekeeper.stop()
        state.journal.close()

    def progress(self) -> dict[str, int]:
        """Counters that only grow: a test waits for the dispatcher to have passed instead of sleeping."""
        with self.state.lock:
            return {"dispatch_passes": self.scheduler.dispatch_passes, "ticks": self.scheduler.ticks}

    # ------------------------------------------------------------------ pools and nodes

    def create_pool(self, body: Doc) -> Doc:
        return self.pools.create_pool(body)

    def get_pool(self, pool_id: str) -> Doc:
        return self.pools.get_pool(pool_id)

    def pool_exists(self, pool_id: str) -> bool:
        return self.pools.pool_exists(pool_id)

    def list_pools(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        return self.pools.list_pools(query)

    def delete_pool(self, pool_id: str) -> None:
        self.pools.delete_pool(pool_id)

    def resize_pool(self, pool_id: str, body: Doc) -> None:
        self.pools.resize_pool(pool_id, body)

    def stop_pool_resize(self, pool_id: str) -> None:
        self.pools.stop_pool_resize(pool_id)

    def update_pool(self, pool_id: str, body: Doc, replace: bool) -> None:
        self.pools.update_pool(pool_id, body, replace)

    def evaluate_autoscale(self, pool_id: str, body: Doc) -> Doc:
        return self.pools.autoscaling.evaluate(pool_id, body)

    def enable_autoscale(self, pool_id: str, body: Doc) -> None:
        self.pools.autoscaling.enable(pool_id, body)

    def disable_autoscale(self, pool_id: str) -> None:
        self.pools.autoscaling.disable(pool_id)

    def remove_nodes(self, pool_id: str, body: Doc) -> None:
        self.pools.remove_nodes(pool_id, body)

    def reboot_node(self, pool_id: str, node_id: str, option: str | None) -> None:
        self.pools.reboot_node(pool_id, node_id, option)

    def set_node_scheduling(self, pool_id: str, node_id: str, enabled: bool, option: str | None = None) -> None:
        self.pools.set_node_scheduling(pool_id, node_id, enabled, option)

    def list_nodes(self, pool_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        return self.pools.list_nodes(pool_id, query)

    def get_node(self, pool_id: str, node_id: str) -> Doc:
        return self.pools.get_node(pool_id, node_id)

    def pool_node_counts(self) -> list[Doc]:
        return self.pools.pool_node_counts()

    def node_file_root(self, pool_id: str, node_id: str) -> Path:
        return self.pools.node_file_root(pool_id, node_id)

    # ------------------------------------------------------------------ jobs

    def create_job(self, body: Doc) -> Doc:
        return self.jobs.create_job(body)

    def get_job(self, job_id: str) -> Doc:
        return self.jobs.get_job(job_id)

    def list_jobs(self, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        return self.jobs.list_jobs(query)

    def update_job(self, job_id: str, body: Doc, replace: bool, if_match: str | None = None) -> None:
        self.jobs.update_job(job_id, body, replace, if_match)

    def terminate_job(self, job_id: str, reason: str | None, if_match: str | None = None) -> None:
        self.jobs.terminate_job(job_id, reason, if_match)

    def delete_job(self, job_id: str, if_match: str | None = None) -> None:
        self.jobs.delete_job(job_id, if_match)

    def disable_job(self, job_id: str, option: str | None) -> None:
        self.jobs.disable_job(job_id, option)

    def enable_job(self, job_id: str) -> None:
        self.jobs.enable_job(job_id)

    def preparation_and_release_status(self, job_id: str, query: Mapping[str, str]) -> tuple[list[Doc], str | None]:
        return self.jobs.preparation_and_release_status(job_id, query)

    def task_counts(self, job_id: str) -> Doc:
        return self.jobs.task_counts(job_id)

    # ------------------------------------------------------------------ tasks

    def create_task(self, job_id: str, body: Doc) -> Doc:
        return self.tasks.create_task(job_id, body)

    def create_task_collection(self, job_id: str, body: Any) -> list[Doc]:
        return self.tasks.create_task_collection(job_id, body)

    def get_task(self, job_id: str, task_id: str) -> Doc:
        return self.tasks.get_task(job_id, task_id)

    def list_tasks(self, job_id: str, query: dict[str, str]) -> tuple[list[Doc], str | None]:
        return self.tasks.list_tasks(job_id, query)

    def update_task(self, job_id: str, task_id: str, body: Doc, if_match: str | None = None) -> None:
        self.tasks.update_task(job_id, task_id, body, if_match)

    def terminate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        self.tasks.terminate_task(job_id, task_id, if_match)

    def reactivate_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        self.tasks.reactivate_task(job_id, task_id, if_match)

    def delete_task(self, job_id: str, task_id: str, if_match: str | None = None) -> None:
        self.tasks.delete_task(job_id, task_id, if_match)

    def task_file_root(self, job_id: str, task_id: str) -> Path:
        return self.tasks.task_file_root(job_id, task_id)

    # ------------------------------------------------------------------ listing

    @staticmethod
    def page(
        docs: Iterable[Doc], query: Mapping[str, str], filters: odata.FilterSpec, *, selectable: bool = True
    ) -> tuple[list[Doc], str | None]:
        """One page of documents that carry their list position as "_seq" (the server's files and images)."""
        return listing.page_of_docs(docs, query, filters, selectable=selectable)
