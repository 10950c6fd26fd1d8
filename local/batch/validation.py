"""Validation of what Batch checks in requests: ids, durations, property types, pool and task shapes."""

from __future__ import annotations

import re
from typing import Any

from local.batch import autoscale_syntax, clock
from local.batch.errors import BatchApiError, invalid_property, missing_property

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_id(value: Any, name: str = "id") -> str:
    if value is None or value == "":
        raise missing_property(name)
    if not isinstance(value, str) or not _ID.match(value):
        raise invalid_property(
            name,
            value,
            "The id can contain any combination of alphanumeric characters including hyphens "
            "and underscores, and cannot contain more than 64 characters.",
        )
    return value


def key(identifier: str) -> str:
    """Batch ids are case-preserving and case-insensitive."""
    return identifier.lower()


def check_duration(value: Any, name: str) -> None:
    if value is None:
        return
    try:
        seconds = clock.duration_seconds(str(value))
    except ValueError:
        raise invalid_property(name, value, "not an ISO 8601 duration") from None
    if seconds < 0:
        raise invalid_property(name, value, "must not be negative")


def check_int(value: Any, name: str, minimum: int | None = None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_property(name, value, "must be an integer")
    if minimum is not None and value < minimum:
        raise invalid_property(name, value, f"must be at least {minimum}")


def check_relative_path(value: Any, name: str) -> None:
    if value is None:
        return
    text = str(value).replace("\\", "/")
    if text.startswith("/") or ".." in text.split("/"):
        raise invalid_property(name, value, "must be a relative path that stays inside the working directory")


def check_resource_files(files: Any, name: str = "resourceFiles") -> None:
    if files is None:
        return
    if not isinstance(files, list):
        raise invalid_property(name, files, "must be an array")
    for index, resource in enumerate(files):
        where = f"{name}[{index}]"
        if not isinstance(resource, dict):
            raise invalid_property(where, resource, "must be an object")
        sources = [k for k in ("httpUrl", "storageContainerUrl", "autoStorageContainerName") if resource.get(k)]
        if len(sources) != 1:
            raise BatchApiError(
                400,
                "InvalidPropertyValue",
                "Exactly one of httpUrl, storageContainerUrl and autoStorageContainerName must be specified.",
                {"PropertyName": where},
            )
        if sources[0] == "httpUrl" and not resource.get("filePath"):
            raise missing_property(f"{where}.filePath")
        check_relative_path(resource.get("filePath"), f"{where}.filePath")
        mode = resource.get("fileMode")
        if mode is not None and not re.fullmatch(r"0?[0-7]{3}", str(mode)):
            raise invalid_property(f"{where}.fileMode", mode, "must be an octal mode such as 0755")


def check_output_files(files: Any) -> None:
    if files is None:
        return
    if not isinstance(files, list):
        raise invalid_property("outputFiles", files, "must be an array")
    for index, output in enumerate(files):
        where = f"outputFiles[{index}]"
        if not isinstance(output, dict):
            raise invalid_property(where, output, "must be an object")
        if not output.get("filePattern"):
            raise missing_property(f"{where}.filePattern")
        container = (output.get("destination") or {}).get("container")
        if not container or not container.get("containerUrl"):
            raise missing_property(f"{where}.destination.container.containerUrl")
        condition = (output.get("uploadOptions") or {}).get("uploadCondition")
        if not condition:
            raise missing_property(f"{where}.uploadOptions.uploadCondition")
        if str(condition).lower() not in ("tasksuccess", "taskfailure", "taskcompletion"):
            raise invalid_property(f"{where}.uploadOptions.uploadCondition", condition, "unknown upload condition")


def check_environment(settings: Any, name: str) -> None:
    if settings is None:
        return
    if not isinstance(settings, list) or not all(isinstance(s, dict) and s.get("name") for s in settings):
        raise invalid_property(name, settings, "must be an array of {name, value}")


AUTO_USER_SCOPES = ("task", "pool")
ELEVATION_LEVELS = ("nonadmin", "admin")


def user_identity(value: Any, name: str = "userIdentity") -> dict[str, Any]:
    """The identity a task runs as, checked, with the defaults the Batch spec documents filled in.

    Omitted: the pool's non-admin auto-user, as on a Linux node (the spec's job preparation task says
    "a non-administrative user unique to the Pool on Linux Compute Nodes"). An autoUser without scope or
    elevationLevel gets AutoUserSpecification's documented defaults, pool and nonAdmin.
    """
    if value is None:
        return {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}
    if not isinstance(value, dict):
        raise invalid_property(name, value, "must be a JSON object")
    username, auto_user = value.get("username"), value.get("autoUser")
    if (username is None) == (auto_user is None):
        raise invalid_property(name, value, "specify either username or autoUser, but not both")
    if username is not None:
        if not isinstance(username, str) or not username:
            raise invalid_property(f"{name}.username", username, "must be a non-empty string")
        return {"username": username}
    if not isinstance(auto_user, dict):
        raise invalid_property(f"{name}.autoUser", auto_user, "must be a JSON object")
    checked: dict[str, str] = {}
    for field, allowed, default in (
        ("scope", AUTO_USER_SCOPES, "pool"),
        ("elevationLevel", ELEVATION_LEVELS, "nonadmin"),
    ):
        given = auto_user.get(field)
        if given is None:
            checked[field] = default
        elif isinstance(given, str) and given.lower() in allowed:
            checked[field] = given.lower()
        else:
            raise invalid_property(f"{name}.autoUser.{field}", given, f"must be one of {', '.join(allowed)}")
    return {"autoUser": checked}


def check_metadata(metadata: Any) -> None:
    if metadata is None:
        return
    if not isinstance(metadata, list) or not all(isinstance(m, dict) and "name" in m for m in metadata):
        raise invalid_property("metadata", metadata, "must be an array of {name, value}")
    if any(not m["name"] for m in metadata):
        raise BatchApiError(400, "EmptyMetadataKey", "The key for one of the metadata key-value pairs is empty.")


def check_pool_spec(body: dict[str, Any], prefix: str = "") -> None:
    """What Batch requires of a pool (or an auto pool's specification) before it allocates anything."""
    if not body.get("vmSize"):
        raise missing_property(prefix + "vmSize")
    vm = body.get("virtualMachineConfiguration")
    if not isinstance(vm, dict):
        # Cloud service pools are retired: a pool must name its VM image.
        raise missing_property(prefix + "virtualMachineConfiguration")
    if not isinstance(vm.get("imageReference"), dict):
        raise missing_property(prefix + "virtualMachineConfiguration.imageReference")
    if not vm.get("nodeAgentSKUId"):
        raise missing_property(prefix + "virtualMachineConfiguration.nodeAgentSKUId")
    check_container_configuration(
        vm.get("containerConfiguration"), prefix + "virtualMachineConfiguration.containerConfiguration"
    )
    start_task = body.get("startTask")
    if isinstance(start_task, dict):
        check_container_settings(start_task.get("containerSettings"), prefix + "startTask.containerSettings")
    check_int(body.get("taskSlotsPerNode"), prefix + "taskSlotsPerNode", 1)
    if (body.get("taskSlotsPerNode") or 1) > 256:
        raise invalid_property(prefix + "taskSlotsPerNode", body["taskSlotsPerNode"], "the maximum is 256")
    check_int(body.get("targetDedicatedNodes"), prefix + "targetDedicatedNodes", 0)
    check_int(body.get("targetLowPriorityNodes"), prefix + "targetLowPriorityNodes", 0)
    if body.get("enableAutoScale"):
        if body.get("targetDedicatedNodes") is not None or body.get("targetLowPriorityNodes") is not None:
            raise invalid_property(
                prefix + "targetDedicatedNodes",
                body.get("targetDedicatedNodes"),
                "must not be specified when enableAutoScale is true",
            )
        if not body.get("autoScaleFormula"):
            raise missing_property(prefix + "autoScaleFormula")
        check_autoscale(body.get("autoScaleFormula"), body.get("autoScaleEvaluationInterval"), prefix)
    elif body.get("targetDedicatedNodes") is None and body.get("targetLowPriorityNodes") is None:
        raise missing_property(prefix + "targetDedicatedNodes")
    timeout = body.get("resizeTimeout")
    if timeout is not None:
        check_duration(timeout, prefix + "resizeTimeout")
        if clock.duration_seconds(str(timeout)) < 300:
            raise invalid_property(prefix + "resizeTimeout", timeout, "the minimum is 5 minutes")
    check_metadata(body.get("metadata"))


# Batch: "The minimum interval is five minutes, and the maximum is 168 hours. If an interval outside this
# range is specified, the Batch service returns a Bad Request (400) error."
AUTOSCALE_INTERVAL_SECONDS = (300.0, 168 * 3600.0)


def check_autoscale(formula: Any, interval: Any, prefix: str = "") -> None:
    """autoScaleFormula (parsed: a syntax error or a construct the emulator cannot evaluate is a 400 naming
    it) and autoScaleEvaluationInterval (5 minutes to 168 hours)."""
    if interval is not None:
        name = prefix + "autoScaleEvaluationInterval"
        check_duration(interval, name)
        low, high = AUTOSCALE_INTERVAL_SECONDS
        if not low <= clock.duration_seconds(str(interval)) <= high:
            raise invalid_property(name, interval, "must be between 5 minutes and 168 hours")
    if formula is None:
        return
    if not isinstance(formula, str):
        raise invalid_property(prefix + "autoScaleFormula", formula, "must be a string")
    try:
        autoscale_syntax.parse(formula)
    except autoscale_syntax.FormulaError as error:
        raise BatchApiError(
            400,
            error.code,
            f"The autoscale formula is not valid: {error.detail}",
            {"PropertyName": prefix + "autoScaleFormula", "Message": error.detail},
        ) from None


# The JSON type of each property the emulator reads, so a wrong shape is a 400, never a crash.
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "displayName": str,
    "commandLine": str,
    "vmSize": str,
    "constraints": dict,
    "poolInfo": dict,
    "autoPoolSpecification": dict,
    "pool": dict,
    "virtualMachineConfiguration": dict,
    "imageReference": dict,
    "resourceFiles": list,
    "outputFiles": list,
    "environmentSettings": list,
    "commonEnvironmentSettings": list,
    "metadata": list,
    "exitConditions": dict,
    "exitCodes": list,
    "exitCodeRanges": list,
    "dependsOn": dict,
    "taskIds": list,
    "taskIdRanges": list,
    "applicationPackageReferences": list,
    "userIdentity": dict,
    "taskSchedulingPolicy": dict,
    "startTask": dict,
    "containerConfiguration": dict,
    "containerSettings": dict,
    "containerImageNames": list,
    "containerRegistries": list,
    "containerHostBatchBindMounts": list,
    "containerRunOptions": str,
    "imageName": str,
    "maxTaskRetryCount": int,
    "maxParallelTasks": int,
    "priority": int,
    "requiredSlots": int,
    "taskSlotsPerNode": int,
    "targetDedicatedNodes": int,
    "targetLowPriorityNodes": int,
    "enableAutoScale": bool,
    "autoScaleFormula": str,
    "autoScaleEvaluationInterval": str,
    "usesTaskDependencies": bool,
    "allowTaskPreemption": bool,
    "keepAlive": bool,
    "maxWallClockTime": str,
    "retentionTime": str,
    "resizeTimeout": str,
    "onAllTasksComplete": str,
    "onTaskFailure": str,
}


def check_shape(value: Any, path: str = "") -> None:
    """Reject a body whose properties have the wrong JSON type (400 InvalidPropertyValue)."""
    if isinstance(value, dict):
        for name, child in value.items():
            where = f"{path}.{name}" if path else str(name)
            expected = _SHAPES.get(str(name))
            if child is not None and expected is not None:
                wrong = isinstance(child, bool) and expected is int
                if wrong or not isinstance(child, expected):
                    kind = expected.__name__ if isinstance(expected, type) else "value"
                    raise invalid_property(where, child, f"must be a JSON {_JSON_NAMES.get(kind, kind)}")
            check_shape(child, where)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            check_shape(child, f"{path}[{index}]")


_JSON_NAMES = {"dict": "object", "list": "array", "str": "string", "int": "integer", "bool": "boolean"}


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BatchApiError(
            400,
            "InvalidRequestBody",
            "The specified Request Body is not syntactically valid.",
            {"Reason": "the body must be a JSON object"},
        )
    check_shape(body)
    return body


# Containers, per the Batch REST spec 2025-06-01 (Azure/azure-rest-api-specs specification/batch/data-plane/Batch,
# models.tsp; the same text is in azure-batch 15.1.0's models): ContainerConfiguration.type is required and one of
# ContainerType; BatchTaskContainerSettings.imageName is required; workingDirectory is a ContainerWorkingDirectory;
# each containerHostBatchBindMounts entry's source is a ContainerHostDataPath. The enums are case-insensitive in the
# SDK (CaseInsensitiveEnumMeta), so they are compared lowercased here and stored as sent.
CONTAINER_TYPES = ("dockercompatible", "cricompatible")
CONTAINER_WORKING_DIRECTORIES = ("taskworkingdirectory", "containerimagedefault")
CONTAINER_HOST_DATA_PATHS = ("shared", "startup", "vfsmounts", "task", "jobprep", "applications")


def _check_enum(value: Any, name: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise invalid_property(name, value, f"must be one of {', '.join(allowed)} (case-insensitive)")


def _check_string_list(value: Any, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise invalid_property(name, value, "must be an array of non-empty strings")


def check_container_registry(registry: Any, name: str) -> None:
    """A ContainerRegistryReference: a username and password together, or an identityReference, not both."""
    if registry is None:
        return
    if not isinstance(registry, dict):
        raise invalid_property(name, registry, "must be a JSON object")
    for field in ("username", "password", "registryServer"):
        if registry.get(field) is not None and not isinstance(registry[field], str):
            shown = "<redacted>" if field == "password" else registry[field]
            raise invalid_property(f"{name}.{field}", shown, "must be a string")
    has_user, has_password = bool(registry.get("username")), bool(registry.get("password"))
    if has_user != has_password:
        raise missing_property(f"{name}.{'password' if has_user else 'username'}")
    identity = registry.get("identityReference")
    if identity is not None:
        if not isinstance(identity, dict):
            raise invalid_property(f"{name}.identityReference", identity, "must be a JSON object")
        if has_user:
            raise invalid_property(
                f"{name}.identityReference", identity, "give either username and password or identityReference"
            )


def check_container_configuration(value: Any, name: str) -> None:
    """virtualMachineConfiguration.containerConfiguration of a pool."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_property(name, value, "must be a JSON object")
    if value.get("type") is None:
        raise missing_property(f"{name}.type")
    _check_enum(value["type"], f"{name}.type", CONTAINER_TYPES)
    _check_string_list(value.get("containerImageNames"), f"{name}.containerImageNames")
    registries = value.get("containerRegistries")
    if registries is not None:
        if not isinstance(registries, list):
            raise invalid_property(f"{name}.containerRegistries", registries, "must be an array")
        for index, registry in enumerate(registries):
            check_container_registry(registry, f"{name}.containerRegistries[{index}]")


def check_container_settings(value: Any, name: str = "containerSettings") -> None:
    """A task's containerSettings (BatchTaskContainerSettings)."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid_property(name, value, "must be a JSON object")
    image = value.get("imageName")
    if image is None or image == "":
        raise missing_property(f"{name}.imageName")
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise invalid_property(f"{name}.imageName", image, "must be an image reference as given to docker pull")
    options = value.get("containerRunOptions")
    if options is not None and not isinstance(options, str):
        raise invalid_property(f"{name}.containerRunOptions", options, "must be a string")
    if value.get("workingDirectory") is not None:
        _check_enum(value["workingDirectory"], f"{name}.workingDirectory", CONTAINER_WORKING_DIRECTORIES)
    check_container_registry(value.get("registry"), f"{name}.registry")
    mounts = value.get("containerHostBatchBindMounts")
    if mounts is not None:
        if not isinstance(mounts, list):
            raise invalid_property(f"{name}.containerHostBatchBindMounts", mounts, "must be an array")
        for index, mount in enumerate(mounts):
            where = f"{name}.containerHostBatchBindMounts[{index}]"
            if not isinstance(mount, dict):
                raise invalid_property(where, mount, "must be a JSON object")
            if mount.get("source") is not None:
                _check_enum(mount["source"], f"{where}.source", CONTAINER_HOST_DATA_PATHS)
            if mount.get("isReadOnly") is not None and not isinstance(mount["isReadOnly"], bool):
                raise invalid_property(f"{where}.isReadOnly", mount["isReadOnly"], "must be a boolean")
