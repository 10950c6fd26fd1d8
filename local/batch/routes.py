"""The route table of the Batch REST subset (Werkzeug's router) and the handler of each operation."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule

from local.batch import files, odata
from local.batch.service import BatchService
from local.batch.wire import Request, Response, created, element, entity_headers, page

Handler = Callable[["Api", Request], Response]


class Api:
    """Maps each REST operation to the service, by operation name (the REST spec's operationId)."""

    def __init__(self, service: BatchService) -> None:
        self.service = service
        # One rule per path; the method picks the operation (Werkzeug would answer HEAD with a GET rule).
        self.operations: dict[str, dict[str, tuple[str, Handler]]] = {}
        for method, template, operation, handler in ROUTES:
            self.operations.setdefault(template, {})[method] = (operation, handler)
        # Batch's paths are case-insensitive: the rule is found on the lowercased path, the values are
        # then taken from the path as sent (every parameter is whole segments).
        self.router = Map(
            [Rule(template, endpoint=template) for template in self.operations],
            strict_slashes=False,
            merge_slashes=False,
            redirect_defaults=False,
        ).bind("emulator")

    def match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        """The operation for `path` (percent-encoded, no trailing slash), its handler and path parameters."""
        try:
            template, _lowered = self.router.match(path.lower(), method="GET")
        except HTTPException:
            return None
        found = self.operations[str(template)].get(method)
        if found is None:
            return None
        segments = path.split("/")
        params: dict[str, str] = {}
        for index, part in enumerate(str(template).split("/")):
            if part.startswith("<path:"):
                params[part[6:-1]] = unquote("/".join(segments[index:]))
            elif part.startswith("<"):
                params[part[1:-1]] = unquote(segments[index])
        return found[0], found[1], params

    # ---------------------------------------------------------------- pools

    def pool_add(self, request: Request) -> Response:
        return created(self.service.create_pool(request.object()))

    def pool_list(self, request: Request) -> Response:
        return page(request, "pools", self.service.list_pools(request.query))

    def pool_get(self, request: Request) -> Response:
        return element(request, "pools", self.service.get_pool(request.params["pool"]))

    def pool_exists(self, request: Request) -> Response:
        if self.service.pool_exists(request.params["pool"]):
            return Response(200, None, entity_headers(self.service.get_pool(request.params["pool"])))
        return Response(404, b"")

    def pool_delete(self, request: Request) -> Response:
        self.service.delete_pool(request.params["pool"])
        return Response(202)

    def pool_patch(self, request: Request) -> Response:
        self.service.update_pool(request.params["pool"], request.object(), replace=False)
        return Response(200, None, entity_headers(self.service.get_pool(request.params["pool"])))

    def pool_update_properties(self, request: Request) -> Response:
        self.service.update_pool(request.params["pool"], request.object(), replace=True)
        return Response(204)

    def pool_resize(self, request: Request) -> Response:
        self.service.resize_pool(request.params["pool"], request.object())
        return Response(202)

    def pool_stop_resize(self, request: Request) -> Response:
        self.service.stop_pool_resize(request.params["pool"])
        return Response(202)

    def pool_remove_nodes(self, request: Request) -> Response:
        self.service.remove_nodes(request.params["pool"], request.object())
        return Response(202)

    def node_reboot(self, request: Request) -> Response:
        body = request.object()
        option = body.get("nodeRebootOption")
        self.service.reboot_node(request.params["pool"], request.params["node"], str(option) if option else None)
        return Response(202)

    def node_disable_scheduling(self, request: Request) -> Response:
        option = request.object().get("nodeDisableSchedulingOption")
        self.service.set_node_scheduling(
            request.params["pool"], request.params["node"], False, str(option) if option else None
        )
        return Response(200)

    def node_enable_scheduling(self, request: Request) -> Response:
        self.service.set_node_scheduling(request.params["pool"], request.params["node"], True)
        return Response(200)

    def node_list(self, request: Request) -> Response:
        return page(request, "nodes", self.service.list_nodes(request.params["pool"], request.query))

    def node_get(self, request: Request) -> Response:
        return element(request, "nodes", self.service.get_node(request.params["pool"], request.params["node"]))

    def supported_images(self, request: Request) -> Response:
        images = [
            {
                "nodeAgentSKUId": f"batch.node.ubuntu {version}",
                "imageReference": {"publisher": "canonical", "offer": offer, "sku": "server", "version": "latest"},
                "osType": "linux",
                "capabilities": [],
                "verificationType": "verified",
                "_seq": index,
            }
            for index, (version, offer) in enumerate(
                (("22.04", "0001-com-ubuntu-server-jammy"), ("24.04", "ubuntu-24_04-lts")), 1
            )
        ]
        return page(request, "supportedimages", BatchService.page(images, request.query, odata.IMAGE_FILTERS))

    def node_counts(self, request: Request) -> Response:
        items = self.service.pool_node_counts()
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#poolnodecounts", "value": items})

    # ---------------------------------------------------------------- jobs

    def job_add(self, request: Request) -> Response:
        return created(self.service.create_job(request.object()))

    def job_list(self, request: Request) -> Response:
        return page(request, "jobs", self.service.list_jobs(request.query))

    def job_get(self, request: Request) -> Response:
        return element(request, "jobs", self.service.get_job(request.params["job"]))

    def job_patch(self, request: Request) -> Response:
        self.service.update_job(
            request.params["job"], request.object(), replace=False, if_match=request.header("If-Match")
        )
        return Response(200, None, entity_headers(self.service.get_job(request.params["job"])))

    def job_update(self, request: Request) -> Response:
        self.service.update_job(
            request.params["job"], request.object(), replace=True, if_match=request.header("If-Match")
        )
        return Response(200, None, entity_headers(self.service.get_job(request.params["job"])))

    def job_delete(self, request: Request) -> Response:
        self.service.delete_job(request.params["job"], if_match=request.header("If-Match"))
        return Response(202)

    def job_terminate(self, request: Request) -> Response:
        body = request.object() if request.body else {}
        reason = body.get("terminateReason") if isinstance(body, dict) else None
        self.service.terminate_job(request.params["job"], reason, if_match=request.header("If-Match"))
        return Response(202)

    def job_disable(self, request: Request) -> Response:
        body = request.object()
        self.service.disable_job(request.params["job"], body.get("disableTasks") if isinstance(body, dict) else None)
        return Response(202)

    def job_enable(self, request: Request) -> Response:
        self.service.enable_job(request.params["job"])
        return Response(202)

    def job_preparation_status(self, request: Request) -> Response:
        result = self.service.preparation_and_release_status(request.params["job"], request.query)
        return page(request, "jobpreparationandreleasetaskstatuslist", result)

    def job_task_counts(self, request: Request) -> Response:
        counts = self.service.task_counts(request.params["job"])
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#taskcountsresult/@Element", **counts})

    # ---------------------------------------------------------------- tasks

    def task_add(self, request: Request) -> Response:
        return created(self.service.create_task(request.params["job"], request.object()))

    def task_list(self, request: Request) -> Response:
        return page(request, "tasks", self.service.list_tasks(request.params["job"], request.query))

    def task_add_collection(self, request: Request) -> Response:
        results = self.service.create_task_collection(request.params["job"], request.object())
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#taskaddresult", "value": results})

    def task_get(self, request: Request) -> Response:
        return element(request, "tasks", self.service.get_task(request.params["job"], request.params["task"]))

    def task_update(self, request: Request) -> Response:
        self.service.update_task(
            request.params["job"], request.params["task"], request.object(), if_match=request.header("If-Match")
        )
        return Response(
            200, None, entity_headers(self.service.get_task(request.params["job"], request.params["task"]))
        )

    def task_delete(self, request: Request) -> Response:
        self.service.delete_task(request.params["job"], request.params["task"], if_match=request.header("If-Match"))
        return Response(200)

    def task_terminate(self, request: Request) -> Response:
        self.service.terminate_task(request.params["job"], request.params["task"], if_match=request.header("If-Match"))
        return Response(204)

    def task_reactivate(self, request: Request) -> Response:
        self.service.reactivate_task(request.params["job"], request.params["task"], if_match=request.header("If-Match"))
        return Response(204)

    def task_subtasks(self, request: Request) -> Response:
        self.service.get_task(request.params["job"], request.params["task"])
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#subtaskinformations", "value": []})

    # ---------------------------------------------------------------- task and node files

    def file_list(self, request: Request) -> Response:
        return files.file_list(self.service, request)

    def file_get(self, request: Request) -> Response:
        return files.file_get(self.service, request)

    def file_head(self, request: Request) -> Response:
        return files.file_head(self.service, request)

    def file_delete(self, request: Request) -> Response:
        return files.file_delete(self.service, request)


ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/pools", "Pool_Add", Api.pool_add),
    ("GET", "/pools", "Pool_List", Api.pool_list),
    ("GET", "/pools/<pool>", "Pool_Get", Api.pool_get),
    ("HEAD", "/pools/<pool>", "Pool_Exists", Api.pool_exists),
    ("DELETE", "/pools/<pool>", "Pool_Delete", Api.pool_delete),
    ("PATCH", "/pools/<pool>", "Pool_Patch", Api.pool_patch),
    ("POST", "/pools/<pool>/updateproperties", "Pool_UpdateProperties", Api.pool_update_properties),
    ("POST", "/pools/<pool>/resize", "Pool_Resize", Api.pool_resize),
    ("POST", "/pools/<pool>/stopresize", "Pool_StopResize", Api.pool_stop_resize),
    ("POST", "/pools/<pool>/removenodes", "Pool_RemoveNodes", Api.pool_remove_nodes),
    ("POST", "/pools/<pool>/nodes/<node>/reboot", "ComputeNode_Reboot", Api.node_reboot),
    (
        "POST",
        "/pools/<pool>/nodes/<node>/disablescheduling",
        "ComputeNode_DisableScheduling",
        Api.node_disable_scheduling,
    ),
    (
        "POST",
        "/pools/<pool>/nodes/<node>/enablescheduling",
        "ComputeNode_EnableScheduling",
        Api.node_enable_scheduling,
    ),
    ("GET", "/pools/<pool>/nodes/<node>/files", "File_ListFromComputeNode", Api.file_list),
    ("GET", "/pools/<pool>/nodes/<node>/files/<path:path>", "File_GetFromComputeNode", Api.file_get),
    ("HEAD", "/pools/<pool>/nodes/<node>/files/<path:path>", "File_GetPropertiesFromComputeNode", Api.file_head),
    ("DELETE", "/pools/<pool>/nodes/<node>/files/<path:path>", "File_DeleteFromComputeNode", Api.file_delete),
    ("GET", "/pools/<pool>/nodes", "ComputeNode_List", Api.node_list),
    ("GET", "/pools/<pool>/nodes/<node>", "ComputeNode_Get", Api.node_get),
    ("GET", "/nodecounts", "Account_ListPoolNodeCounts", Api.node_counts),
    ("GET", "/supportedimages", "Account_ListSupportedImages", Api.supported_images),
    ("POST", "/jobs", "Job_Add", Api.job_add),
    ("GET", "/jobs", "Job_List", Api.job_list),
    ("GET", "/jobs/<job>", "Job_Get", Api.job_get),
    ("PATCH", "/jobs/<job>", "Job_Patch", Api.job_patch),
    ("PUT", "/jobs/<job>", "Job_Update", Api.job_update),
    ("DELETE", "/jobs/<job>", "Job_Delete", Api.job_delete),
    ("POST", "/jobs/<job>/terminate", "Job_Terminate", Api.job_terminate),
    ("POST", "/jobs/<job>/disable", "Job_Disable", Api.job_disable),
    ("POST", "/jobs/<job>/enable", "Job_Enable", Api.job_enable),
    ("GET", "/jobs/<job>/taskcounts", "Job_GetTaskCounts", Api.job_task_counts),
    (
        "GET",
        "/jobs/<job>/jobpreparationandreleasetaskstatus",
        "Job_ListPreparationAndReleaseTaskStatus",
        Api.job_preparation_status,
    ),
    ("POST", "/jobs/<job>/tasks", "Task_Add", Api.task_add),
    ("GET", "/jobs/<job>/tasks", "Task_List", Api.task_list),
    ("POST", "/jobs/<job>/addtaskcollection", "Task_AddCollection", Api.task_add_collection),
    ("GET", "/jobs/<job>/tasks/<task>", "Task_Get", Api.task_get),
    ("PUT", "/jobs/<job>/tasks/<task>", "Task_Update", Api.task_update),
    ("DELETE", "/jobs/<job>/tasks/<task>", "Task_Delete", Api.task_delete),
    ("POST", "/jobs/<job>/tasks/<task>/terminate", "Task_Terminate", Api.task_terminate),
    ("POST", "/jobs/<job>/tasks/<task>/reactivate", "Task_Reactivate", Api.task_reactivate),
    ("GET", "/jobs/<job>/tasks/<task>/subtasksinfo", "Task_ListSubtasks", Api.task_subtasks),
    ("GET", "/jobs/<job>/tasks/<task>/files", "File_ListFromTask", Api.file_list),
    ("GET", "/jobs/<job>/tasks/<task>/files/<path:path>", "File_GetFromTask", Api.file_get),
    ("HEAD", "/jobs/<job>/tasks/<task>/files/<path:path>", "File_GetPropertiesFromTask", Api.file_head),
    ("DELETE", "/jobs/<job>/tasks/<task>/files/<path:path>", "File_DeleteFromTask", Api.file_delete),
]
