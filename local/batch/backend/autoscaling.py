"""Autoscale pools: metric samples per pool, evaluating the formula on schedule, resizing with its result.

Batch samples a pool's task metrics every 30 seconds and evaluates its formula every
`autoScaleEvaluationInterval` (5 minutes to 168 hours, 15 by default), and at once when autoscale is
enabled. `--autoscale-interval-seconds S` compresses time for tests: every evaluation interval becomes
S real seconds, and the 30-second sample period and every TimeInterval_* in a formula shrink by the same
factor (S / the pool's interval), so a formula sees as many samples per evaluation as on Batch.

The REST shapes follow the spec (Azure/azure-rest-api-specs, specification/batch, 2025-06-01 examples
Pools_EvaluatePoolAutoscale, Pools_EnablePoolAutoscale, Pools_DisablePoolAutoScale): evaluate answers an
AutoScaleRun {timestamp, results, error{code, message, values[{name, value}]}}, enable and disable
answer 200 with no body.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from local.batch import autoscale, clock, validation
from local.batch.backend.records import Doc, JobState, NodeState, PoolState, StopReason
from local.batch.backend.state import State
from local.batch.errors import BatchApiError, conflict, invalid_property, missing_property

if TYPE_CHECKING:
    from local.batch.backend.pools import Pools

DEFAULT_INTERVAL = "PT15M"
HISTORY = 2880  # a day of 30-second samples: more than any formula here looks back
LEAVING_POOL = "leavingpool"  # ComputeNodeState while taskcompletion/retaineddata let its tasks finish
METRICS = ("$PendingTasks", "$ActiveTasks", "$RunningTasks")


@dataclass
class _Schedule:
    """One autoscale pool's sample history and when it next samples and evaluates (monotonic seconds)."""

    interval: float  # real seconds between evaluations
    time_scale: float  # real seconds per Batch second
    next_sample: float = 0.0
    next_evaluation: float = 0.0
    samples: dict[str, deque[tuple[float, float]]] = field(
        default_factory=lambda: {name: deque(maxlen=HISTORY) for name in METRICS}
    )


def run_error(error: autoscale.FormulaError) -> Doc:
    """The AutoScaleRunError of a failed evaluation (its values are NameValuePairs, not BatchError's key/value)."""
    values = [{"name": "Message", "value": error.detail}]
    if error.line:
        values += [{"name": "Line", "value": str(error.line)}, {"name": "Column", "value": str(error.column)}]
    return {"code": error.code, "message": error.detail, "values": values}


class Autoscaling:
    """The autoscale side of pools; every method runs under the state lock."""

    def __init__(self, state: State, pools: Pools, interval_override: float | None = None) -> None:
        self.state = state
        self.pools = pools
        self.interval_override = interval_override
        self.schedules: dict[str, _Schedule] = {}

    # ------------------------------------------------------------------ the REST operations

    def evaluate(self, pool_id: str, body: Doc) -> Doc:
        """Pool_EvaluateAutoScale: the formula's results on this pool now, not applied."""
        formula = body.get("autoScaleFormula")
        if not formula:
            raise missing_property("autoScaleFormula")
        if not isinstance(formula, str):
            raise invalid_property("autoScaleFormula", formula, "must be a string")
        if len(formula) > autoscale.MAX_FORMULA_CHARS:
            raise BatchApiError(
                400,
                "AutoScaleFormulaTooLong",
                f"The autoscale formula is {len(formula)} characters long; "
                f"the maximum is {autoscale.MAX_FORMULA_CHARS}.",
            )
        with self.state.lock:
            pool = self._enabled_pool(pool_id)
            pool_key = validation.key(pool_id)
            schedule = self._schedule(pool_key, pool)
            return self._run(pool_key, pool, schedule, formula)[0]

    def enable(self, pool_id: str, body: Doc) -> None:
        """Pool_EnableAutoScale: set or change the formula and interval, then evaluate at once."""
        formula, interval = body.get("autoScaleFormula"), body.get("autoScaleEvaluationInterval")
        validation.check_autoscale(formula, interval)
        with self.state.lock:
            pool = self.state.pool(pool_id).doc
            if pool["state"] == PoolState.DELETING:
                raise conflict(
                    "PoolBeingDeleted", "The specified pool has been marked for deletion and is being reclaimed."
                )
            if not pool.get("enableAutoScale") and not formula:
                raise missing_property("autoScaleFormula")
            if pool.get("enableAutoScale") and not formula and not interval:
                raise missing_property("autoScaleFormula")
            pool["enableAutoScale"] = True
            if formula:
                pool["autoScaleFormula"] = formula
            pool["autoScaleEvaluationInterval"] = (
                interval or pool.get("autoScaleEvaluationInterval") or DEFAULT_INTERVAL
            )
            pool_key = validation.key(pool_id)
            self.schedules.pop(pool_key, None)
            self.start(pool_key)

    def disable(self, pool_id: str) -> None:
        """Pool_DisableAutoScale: the pool keeps its current targets and is sized by hand again."""
        with self.state.lock:
            pool = self.state.pool(pool_id).doc
            pool["enableAutoScale"] = False
            pool.pop("autoScaleFormula", None)
            pool.pop("autoScaleEvaluationInterval", None)
            pool_key = validation.key(pool_id)
            self.schedules.pop(pool_key, None)
            self.state.touch(pool)
            self.state.save_pool(pool_key)

    # ------------------------------------------------------------------ the dispatcher's side

    def start(self, pool_key: str) -> None:
        """A pool's autoscale begins (created, enabled, or found after a restart): sample, evaluate, resize."""
        pool = self.state.pools[pool_key].doc
        if pool.get("autoScaleEvaluationInterval") is None:
            pool["autoScaleEvaluationInterval"] = DEFAULT_INTERVAL
        schedule = self._schedule(pool_key, pool)
        self._evaluate_and_apply(pool_key, pool, schedule, time.monotonic())

    def tick(self) -> float:
        """Take due samples, run due evaluations, let drained leaving nodes go; seconds until the next is due."""
        now = time.monotonic()
        wait = 60.0
        for pool_key, entry in list(self.state.pools.items()):
            pool = entry.doc
            if not pool.get("enableAutoScale") or pool["state"] != PoolState.ACTIVE:
                self.schedules.pop(pool_key, None)
                continue
            schedule = self.schedules.get(pool_key)
            if schedule is None:
                self.start(pool_key)
                continue
            if now >= schedule.next_sample:
                self._sample(pool_key, schedule, now)
            if now >= schedule.next_evaluation:
                self._evaluate_and_apply(pool_key, pool, schedule, now)
            wait = min(wait, schedule.next_sample - now, schedule.next_evaluation - now)
        self._release_leaving_nodes()
        return max(0.0, wait)

    # ------------------------------------------------------------------ inside

    def _enabled_pool(self, pool_id: str) -> Doc:
        pool = self.state.pool(pool_id).doc
        if not pool.get("enableAutoScale"):
            # The spec: "The Pool must have auto scaling enabled in order to evaluate a formula."
            raise conflict("AutoScalingNotEnabled", "The specified pool does not have automatic scaling enabled.")
        return pool

    def _schedule(self, pool_key: str, pool: Doc) -> _Schedule:
        schedule = self.schedules.get(pool_key)
        if schedule is None:
            batch_interval = clock.duration_seconds(str(pool.get("autoScaleEvaluationInterval") or DEFAULT_INTERVAL))
            interval = self.interval_override or batch_interval
            schedule = _Schedule(interval=interval, time_scale=interval / batch_interval)
            self.schedules[pool_key] = schedule
            self._sample(pool_key, schedule, time.monotonic())  # a first sample, so GetSample(1) has one
        return schedule

    def _sample(self, pool_key: str, schedule: _Schedule, now: float) -> None:
        """$ActiveTasks (dependencies met), $RunningTasks and their sum over the active jobs bound to the pool."""
        active = running = 0
        for job_key, job in self.state.jobs.items():
            if job.doc["state"] != JobState.ACTIVE or self.state.job_pool_key(job.doc) != pool_key:
                continue
            counts = self.state.counts[job_key].tasks
            active += counts.active - len(self.state.waiting.get(job_key, ()))
            running += counts.running
        for name, value in (("$PendingTasks", active + running), ("$ActiveTasks", active), ("$RunningTasks", running)):
            schedule.samples[name].append((now, float(value)))
        period = autoscale.BATCH_SAMPLE_SECONDS * schedule.time_scale
        schedule.next_sample = max(schedule.next_sample + period, now + period / 2)

    def _metrics(self, pool_key: str, pool: Doc, schedule: _Schedule) -> autoscale.Metrics:
        nodes = self.state.nodes.get(pool_key, {}).values()
        return autoscale.Metrics(
            now=time.monotonic(),
            samples={name: list(values) for name, values in schedule.samples.items()},
            time_scale=schedule.time_scale,
            target_dedicated=int(pool["targetDedicatedNodes"]),
            target_low_priority=int(pool["targetLowPriorityNodes"]),
            current_dedicated=sum(1 for node in nodes if node.doc["isDedicated"]),
            current_low_priority=sum(1 for node in nodes if not node.doc["isDedicated"]),
        )

    def _run(self, pool_key: str, pool: Doc, schedule: _Schedule, formula: str) -> tuple[Doc, autoscale.Outcome | None]:
        """The AutoScaleRun of evaluating `formula` now, and its outcome when it succeeded."""
        run: Doc = {"timestamp": clock.stamp()}
        try:
            outcome = autoscale.evaluate(formula, self._metrics(pool_key, pool, schedule))
        except autoscale.FormulaError as error:
            run["error"] = run_error(error)
            return run, None
        run["results"] = outcome.results
        return run, outcome

    def _evaluate_and_apply(self, pool_key: str, pool: Doc, schedule: _Schedule, now: float) -> None:
        schedule.next_evaluation = now + schedule.interval
        run, outcome = self._run(pool_key, pool, schedule, str(pool.get("autoScaleFormula") or ""))
        pool["autoScaleRun"] = run
        if outcome is not None:
            self._resize(pool_key, pool, outcome)
        self.state.touch(pool)
        self.state.save_pool(pool_key)
        self.state.wakeup.notify_all()

    def _resize(self, pool_key: str, pool: Doc, outcome: autoscale.Outcome) -> None:
        """Shrink with the formula's $NodeDeallocationOption, grow with the pool's own allocation."""
        nodes = self.state.nodes.setdefault(pool_key, {})
        targets = {True: outcome.target_dedicated, False: outcome.target_low_priority}
        option = outcome.deallocation
        for dedicated, target in targets.items():
            kind = [key for key, node in nodes.items() if bool(node.doc["isDedicated"]) == dedicated]
            live = [key for key in kind if nodes[key].doc["state"] != LEAVING_POOL]
            leaving = [key for key in kind if nodes[key].doc["state"] == LEAVING_POOL]
            for node_key in leaving[: max(0, target - len(live))]:
                # A node still draining its tasks is kept rather than another one allocated.
                node = nodes[node_key].doc
                node["state"] = NodeState.RUNNING if node["runningTasksCount"] else NodeState.IDLE
                node["stateTransitionTime"] = clock.stamp()
                self.state.save_node(pool_key, node_key)
                live.append(node_key)
            live.sort(key=lambda key: (nodes[key].doc["runningTasksCount"] > 0, key))
            for node_key in live[target:]:
                node = nodes[node_key].doc
                if option in (StopReason.REQUEUE, StopReason.TERMINATE) or not node["runningTasksCount"]:
                    self.pools.remove_node(pool_key, node_key, option)
                else:
                    node["state"] = LEAVING_POOL
                    node["stateTransitionTime"] = clock.stamp()
                    self.state.save_node(pool_key, node_key)
        # Growth reuses the pool's allocation: it counts every node of a kind, leaving ones too.
        for dedicated, target_name in ((True, "targetDedicatedNodes"), (False, "targetLowPriorityNodes")):
            still_leaving = sum(
                1
                for node in nodes.values()
                if node.doc["state"] == LEAVING_POOL and node.doc["isDedicated"] == dedicated
            )
            pool[target_name] = targets[dedicated] + still_leaving
        self.pools.resize_nodes(pool_key)
        pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"] = targets[True], targets[False]

    def _release_leaving_nodes(self) -> None:
        busy = {(run.pool_key, run.node_key) for run in self.state.runs.values()}
        for pool_key, nodes in self.state.nodes.items():
            pool = self.state.pools.get(pool_key)
            gone = [
                key for key, node in nodes.items() if node.doc["state"] == LEAVING_POOL and (pool_key, key) not in busy
            ]
            for node_key in gone:
                dedicated = bool(nodes[node_key].doc["isDedicated"])
                self.pools.remove_node(pool_key, node_key, StopReason.REQUEUE)
                if pool is not None:
                    current = "currentDedicatedNodes" if dedicated else "currentLowPriorityNodes"
                    pool.doc[current] = max(0, int(pool.doc[current]) - 1)
            if gone and pool is not None:
                self.state.touch(pool.doc)
                self.state.save_pool(pool_key)
