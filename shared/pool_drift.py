"""How an existing Batch pool differs from the pool the pipelines file asks for, compared as REST JSON.

`desired` is the Pool_Add body batchdrop would send (BatchPoolCreateOptions.as_dict()), `actual` the pool as
Pool_Get returns it (BatchPool.as_dict()). What Batch can change in place comes with the update to make: the start
task (Pool_ReplacePoolProperties), the scale (Pool_EnableAutoScale with the new formula, or Pool_DisableAutoScale
and Pool_Resize). The rest (VM size, image, container configuration, task slots) is only reported: Batch fixes it
when a pool is created.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

NEW_POOL = (
    "Batch sets this when a pool is created: give the pipeline a new pool id (nodes of the new pool get the new "
    "setting), then delete the old pool once its jobs are done"
)
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


@dataclass(frozen=True)
class Update:
    kind: str  # "start_task" | "autoscale" | "fixed"
    body: dict[str, Any]


@dataclass(frozen=True)
class Difference:
    field: str
    wanted: str
    actual: str
    what_to_do: str
    update: Update | None = None


def differences(desired: dict[str, Any], actual: dict[str, Any], compare_sas: bool = True) -> list[Difference]:
    found: list[Difference] = []
    if str(desired.get("vmSize", "")).lower() != str(actual.get("vmSize", "")).lower():
        found.append(Difference("vm_size", str(desired.get("vmSize")), str(actual.get("vmSize")), NEW_POOL))
    wanted_vm, actual_vm = (
        desired.get("virtualMachineConfiguration") or {},
        actual.get("virtualMachineConfiguration") or {},
    )
    if _image(wanted_vm) != _image(actual_vm):
        found.append(Difference("image", _image(wanted_vm), _image(actual_vm), NEW_POOL))
    if _containers(wanted_vm) != _containers(actual_vm):
        found.append(Difference("container", _containers(wanted_vm), _containers(actual_vm), NEW_POOL))
    if int(desired.get("taskSlotsPerNode") or 1) != int(actual.get("taskSlotsPerNode") or 1):
        found.append(
            Difference(
                "task_slots_per_node",
                str(desired.get("taskSlotsPerNode")),
                str(actual.get("taskSlotsPerNode")),
                NEW_POOL,
            )
        )
    found += _start_task(desired.get("startTask"), actual.get("startTask"), compare_sas)
    found += _scale(desired, actual)
    return found


def _image(vm: dict[str, Any]) -> str:
    image = vm.get("imageReference") or {}
    parts = [image.get("publisher"), image.get("offer"), image.get("sku"), vm.get("nodeAgentSKUId")]
    return "/".join(str(part or "").lower() for part in parts)


def _containers(vm: dict[str, Any]) -> str:
    config = vm.get("containerConfiguration")
    if not config:
        return "none"
    registries = sorted(
        f"{r.get('registryServer')}"
        + (f" as {r['username']}" if r.get("username") else "")
        + (
            f" with identity {(r.get('identityReference') or {}).get('resourceId')}"
            if r.get("identityReference")
            else ""
        )
        for r in config.get("containerRegistries") or []
    )
    images = ", ".join(sorted(config.get("containerImageNames") or [])) or "no prefetched images"
    text = f"{str(config.get('type') or '').lower()}: {images}"
    return text + (f"; registries {', '.join(registries)}" if registries else "")


def _start_task_text(task: dict[str, Any] | None) -> str:
    if not task:
        return "none"
    identity = ((task.get("userIdentity") or {}).get("autoUser") or {}).get("elevationLevel") or "nonadmin"
    environment = sorted((e.get("name"), e.get("value")) for e in task.get("environmentSettings") or [])
    files = sorted(str(f.get("filePath")) for f in task.get("resourceFiles") or [])
    return (
        f"command {task.get('commandLine')!r}, elevation {str(identity).lower()}, "
        f"wait_for_success {task.get('waitForSuccess', True)}, retries {task.get('maxTaskRetryCount', 0)}, "
        f"environment {dict(environment)}, files {files}"
    )


def _start_task(desired: dict[str, Any] | None, actual: dict[str, Any] | None, compare_sas: bool) -> list[Difference]:
    wanted, current = _start_task_text(desired), _start_task_text(actual)
    update = Update("start_task", dict(desired or {}))
    what = "updated in place; nodes run the new start task when they join, reboot or are reimaged"
    if wanted != current or not _same_sources(desired, actual):
        return [Difference("start_task", wanted, current, what, update)]
    if compare_sas and desired and _expires_soon(desired, actual or {}):
        return [Difference("start_task.resource_files", "a fresh SAS", "a SAS past half its life", what, update)]
    return []


def _sources(task: dict[str, Any] | None) -> dict[str, str]:
    return {
        str(f.get("filePath")): unquote(urlsplit(str(f.get("httpUrl") or "")).path)
        for f in (task or {}).get("resourceFiles") or []
    }


def _same_sources(desired: dict[str, Any] | None, actual: dict[str, Any] | None) -> bool:
    """Each file comes from the same blob (the SAS aside); desired paths may be given as '/<blob name>' only."""
    wanted, current = _sources(desired), _sources(actual)
    return wanted.keys() == current.keys() and all(current[key].endswith(wanted[key]) for key in wanted)


def _expiry(url: str) -> str:
    return (parse_qs(urlsplit(url).query).get("se") or [""])[0]


def _expires_soon(desired: dict[str, Any], actual: dict[str, Any]) -> bool:
    """The pool's SAS expires before half the life of the one batchdrop would give now (ISO times sort)."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for wanted, current in zip(desired.get("resourceFiles") or [], actual.get("resourceFiles") or [], strict=False):
        fresh, old = _expiry(str(wanted.get("httpUrl"))), _expiry(str(current.get("httpUrl")))
        if not fresh or not old:
            continue
        try:
            fresh_at, old_at = (datetime.fromisoformat(v.replace("Z", "+00:00")) for v in (fresh, old))
        except ValueError:
            continue
        if old_at < now + (fresh_at - now) / 2:
            return True
    return False


def duration_minutes(value: Any) -> float | None:
    match = _DURATION.match(str(value or ""))
    if not match:
        return None
    days, hours, minutes, seconds = (float(part or 0) for part in match.groups())
    return days * 1440 + hours * 60 + minutes + seconds / 60


def _scale(desired: dict[str, Any], actual: dict[str, Any]) -> list[Difference]:
    if desired.get("enableAutoScale"):
        formula = str(desired.get("autoScaleFormula"))
        minutes = duration_minutes(desired.get("autoScaleEvaluationInterval")) or 15
        current_minutes = duration_minutes(actual.get("autoScaleEvaluationInterval"))
        same = (
            bool(actual.get("enableAutoScale"))
            and str(actual.get("autoScaleFormula") or "").strip() == formula.strip()
            and (current_minutes is None or abs(current_minutes - minutes) < 0.01)
        )
        if same:
            return []
        current = (
            f"autoscale every {current_minutes} minutes: {actual.get('autoScaleFormula')}"
            if actual.get("enableAutoScale")
            else _fixed_text(actual)
        )
        update = Update("autoscale", {"autoScaleFormula": formula, "minutes": minutes})
        return [
            Difference(
                "scale",
                f"autoscale every {minutes:g} minutes: {formula}",
                current,
                "updated in place (enable autoscale with the new formula)",
                update,
            )
        ]
    dedicated, spot = int(desired.get("targetDedicatedNodes") or 0), int(desired.get("targetLowPriorityNodes") or 0)
    wanted = f"fixed: {dedicated} dedicated, {spot} Spot"
    current = f"autoscale: {actual.get('autoScaleFormula')}" if actual.get("enableAutoScale") else _fixed_text(actual)
    if current == wanted:
        return []
    update = Update("fixed", {"targetDedicatedNodes": dedicated, "targetLowPriorityNodes": spot})
    return [Difference("scale", wanted, current, "updated in place (disable autoscale, resize)", update)]


def _fixed_text(pool: dict[str, Any]) -> str:
    return (
        f"fixed: {int(pool.get('targetDedicatedNodes') or 0)} dedicated, "
        f"{int(pool.get('targetLowPriorityNodes') or 0)} Spot"
    )
