"""The Batch adapter's pool requests: a pool plan as BatchPoolCreateOptions, and node counts as a plain dict.

Part of the Batch gateway (shared/batch.py), kept apart for its size; like it, it may import azure.batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

from azure.batch import models as batch_models

from shared.models import ResourceFile
from shared.pipelines import PoolPlan, PoolSpec


def node_counts(item: batch_models.BatchPoolNodeCounts) -> dict[str, int]:
    """Dedicated and Spot nodes added up by state; states with no node left out."""
    total: dict[str, int] = {}
    for counts in (item.dedicated, item.low_priority):
        if counts is None:
            continue
        for state, value in counts.as_dict().items():
            if isinstance(value, int) and value and state != "total":
                total[state.lower()] = total.get(state.lower(), 0) + value
    return total


def pool_options(
    plan: PoolPlan, start_files: Sequence[ResourceFile], password: Callable[[str], str]
) -> batch_models.BatchPoolCreateOptions:
    """Pool_Add as the REST spec 2025-06-01 has it (examples Pools_CreatePool_VirtualMachineConfiguration.json;
    containerConfiguration, startTask, enableAutoScale as in the BatchPoolCreateOptions model)."""
    pool = plan.spec
    publisher, offer, sku, node_agent = pool.image(containers=bool(plan.containers))
    container_configuration = None
    if plan.containers:
        registries = {}
        for container in plan.containers:
            registry = container.registry
            if registry is not None:
                registries[registry.server] = batch_models.ContainerRegistryReference(
                    registry_server=registry.server,
                    username=registry.username,
                    password=password(registry.password_setting) if registry.password_setting else None,
                    identity_reference=batch_models.BatchNodeIdentityReference(resource_id=registry.identity)
                    if registry.identity
                    else None,
                )
        container_configuration = batch_models.BatchContainerConfiguration(
            type=batch_models.ContainerType.DOCKER_COMPATIBLE,
            container_image_names=sorted({container.image for container in plan.containers}),
            container_registries=list(registries.values()) or None,
        )
    options = batch_models.BatchPoolCreateOptions(
        id=pool.id,
        vm_size=pool.vm_size,
        virtual_machine_configuration=batch_models.VirtualMachineConfiguration(
            image_reference=batch_models.BatchVmImageReference(
                publisher=publisher, offer=offer, sku=sku, version="latest"
            ),
            node_agent_sku_id=node_agent,
            container_configuration=container_configuration,
        ),
        task_slots_per_node=pool.task_slots_per_node,
        start_task=_start_task(pool, start_files),
    )
    fixed = pool.fixed_nodes()
    autoscale = pool.autoscale()
    if fixed is not None:
        options.target_dedicated_nodes, options.target_low_priority_nodes = fixed
    elif autoscale is not None:
        # With enableAutoScale, targetDedicatedNodes/targetLowPriorityNodes must be absent (Batch answers 400).
        options.enable_auto_scale = True
        options.auto_scale_formula = autoscale[0]
        options.auto_scale_evaluation_interval = timedelta(minutes=autoscale[1])
    return options


def _start_task(pool: PoolSpec, files: Sequence[ResourceFile]) -> batch_models.BatchStartTask | None:
    spec = pool.start_task
    if spec is None:
        return None
    elevation = (
        batch_models.ElevationLevel.ADMIN if spec.elevation == "admin" else batch_models.ElevationLevel.NON_ADMIN
    )
    return batch_models.BatchStartTask(
        command_line=spec.command,
        resource_files=[batch_models.ResourceFile(http_url=f.url, file_path=f.file_path) for f in files] or None,
        environment_settings=[
            batch_models.EnvironmentSetting(name=n, value=v) for n, v in sorted(spec.environment.items())
        ]
        or None,
        # The start task runs before any task, once per node: a pool-scoped auto-user, as Batch's default.
        user_identity=batch_models.UserIdentity(
            auto_user=batch_models.AutoUserSpecification(
                scope=batch_models.AutoUserScope.POOL, elevation_level=elevation
            )
        ),
        max_task_retry_count=spec.max_retries,
        wait_for_success=spec.wait_for_success,
    )
