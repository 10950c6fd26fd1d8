"""The HTTP face of the emulator: routing, SharedKey auth, Batch error bodies, stats and fault injection."""

from __future__ import annotations

import json
import logging
import mimetypes
import os
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from local.batch import auth, clock, odata, validation
from local.batch.errors import BatchApiError, conflict, not_found
from local.batch.service import BatchService, Doc

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
ERROR_METADATA = "$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container.errors/@Element"


@dataclass
class Faults:
    """Configured at start: a fraction of requests fail with one of `statuses`, every request is delayed."""

    rate: float = 0.0
    statuses: tuple[int, ...] = (429, 500, 503)
    latency_ms: float = 0.0
    # Requests processed, then answered with a fault anyway: a response "lost" on the way back, which
    # Batch warns can happen ("the request may have been partially or fully processed").
    after_rate: float = 0.0
    random: random.Random = field(default_factory=random.Random)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pick(self, rate: float | None = None) -> int | None:
        rate = self.rate if rate is None else rate
        if rate <= 0 or not self.statuses:
            return None
        with self.lock:
            if self.random.random() >= rate:
                return None
            return self.random.choice(self.statuses)


@dataclass
class Response:
    status: int
    body: Any = None  # dict -> JSON, bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]
    base_url: str

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BatchApiError(
                400, "InvalidRequestBody", "The specified Request Body is not syntactically valid."
            ) from None

    def object(self) -> dict[str, Any]:
        """The body as a JSON object with properties of the right JSON types (else 400)."""
        return validation.require_object(self.json() if self.body else {})

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


Handler = Callable[["Api", Request], Response]


def _entity_headers(doc: Doc) -> dict[str, str]:
    headers: dict[str, str] = {}
    if doc.get("eTag"):
        headers["ETag"] = str(doc["eTag"])
    if doc.get("lastModified"):
        headers["Last-Modified"] = clock.rfc1123(clock.parse(str(doc["lastModified"])))
    return headers


def _created(doc: Doc) -> Response:
    headers = _entity_headers(doc)
    headers["Location"] = str(doc["url"])
    headers["DataServiceId"] = str(doc["url"])
    return Response(201, None, headers)


def _element(request: Request, entity_set: str, doc: Doc) -> Response:
    headers = _entity_headers(doc)
    selected = odata.project(doc, odata.parse_select(request.query.get("$select")))
    body = {"odata.metadata": f"{request.base_url}/$metadata#{entity_set}/@Element", **selected}
    return Response(200, body, headers)


def _page(request: Request, entity_set: str, result: tuple[list[Doc], str | None]) -> Response:
    items, next_token = result
    body: dict[str, Any] = {"odata.metadata": f"{request.base_url}/$metadata#{entity_set}", "value": items}
    if next_token is not None:
        query = {name: value for name, value in request.query.items() if name not in ("$skiptoken", "api-version")}
        query = {"api-version": request.query.get("api-version", ""), **query, "$skiptoken": next_token}
        body["odata.nextLink"] = f"{request.base_url}{request.path}?" + urlencode(query, quote_via=quote)
    return Response(200, body)


class Api:
    """Maps each REST operation to the service, by operation name (the REST spec's operationId)."""

    def __init__(self, service: BatchService) -> None:
        self.service = service
        self.routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        segment = r"(?P<{}>[^/]+)"

        def route(method: str, template: str, operation: str, handler: Handler) -> None:
            pattern = template
            for name in re.findall(r"\{(\w+)\}", template):
                pattern = pattern.replace("{" + name + "}", r"(?P<path>.+)" if name == "path" else segment.format(name))
            self.routes.append((method, re.compile("^" + pattern + "$", re.IGNORECASE), operation, handler))

        route("POST", "/pools", "Pool_Add", Api.pool_add)
        route("GET", "/pools", "Pool_List", Api.pool_list)
        route("GET", "/pools/{pool}", "Pool_Get", Api.pool_get)
        route("HEAD", "/pools/{pool}", "Pool_Exists", Api.pool_exists)
        route("DELETE", "/pools/{pool}", "Pool_Delete", Api.pool_delete)
        route("PATCH", "/pools/{pool}", "Pool_Patch", Api.pool_patch)
        route("POST", "/pools/{pool}/updateproperties", "Pool_UpdateProperties", Api.pool_update_properties)
        route("POST", "/pools/{pool}/resize", "Pool_Resize", Api.pool_resize)
        route("POST", "/pools/{pool}/stopresize", "Pool_StopResize", Api.pool_stop_resize)
        route("POST", "/pools/{pool}/removenodes", "Pool_RemoveNodes", Api.pool_remove_nodes)
        route("POST", "/pools/{pool}/nodes/{node}/reboot", "ComputeNode_Reboot", Api.node_reboot)
        route(
            "POST",
            "/pools/{pool}/nodes/{node}/disablescheduling",
            "ComputeNode_DisableScheduling",
            Api.node_disable_scheduling,
        )
        route(
            "POST",
            "/pools/{pool}/nodes/{node}/enablescheduling",
            "ComputeNode_EnableScheduling",
            Api.node_enable_scheduling,
        )
        route("GET", "/pools/{pool}/nodes/{node}/files", "File_ListFromComputeNode", Api.file_list)
        route("GET", "/pools/{pool}/nodes/{node}/files/{path}", "File_GetFromComputeNode", Api.file_get)
        route("HEAD", "/pools/{pool}/nodes/{node}/files/{path}", "File_GetPropertiesFromComputeNode", Api.file_head)
        route("DELETE", "/pools/{pool}/nodes/{node}/files/{path}", "File_DeleteFromComputeNode", Api.file_delete)
        route("GET", "/pools/{pool}/nodes", "ComputeNode_List", Api.node_list)
        route("GET", "/pools/{pool}/nodes/{node}", "ComputeNode_Get", Api.node_get)
        route("GET", "/nodecounts", "Account_ListPoolNodeCounts", Api.node_counts)
        route("GET", "/supportedimages", "Account_ListSupportedImages", Api.supported_images)
        route("POST", "/jobs", "Job_Add", Api.job_add)
        route("GET", "/jobs", "Job_List", Api.job_list)
        route("GET", "/jobs/{job}", "Job_Get", Api.job_get)
        route("PATCH", "/jobs/{job}", "Job_Patch", Api.job_patch)
        route("PUT", "/jobs/{job}", "Job_Update", Api.job_update)
        route("DELETE", "/jobs/{job}", "Job_Delete", Api.job_delete)
        route("POST", "/jobs/{job}/terminate", "Job_Terminate", Api.job_terminate)
        route("POST", "/jobs/{job}/disable", "Job_Disable", Api.job_disable)
        route("POST", "/jobs/{job}/enable", "Job_Enable", Api.job_enable)
        route("GET", "/jobs/{job}/taskcounts", "Job_GetTaskCounts", Api.job_task_counts)
        route(
            "GET",
            "/jobs/{job}/jobpreparationandreleasetaskstatus",
            "Job_ListPreparationAndReleaseTaskStatus",
            Api.job_preparation_status,
        )
        route("POST", "/jobs/{job}/tasks", "Task_Add", Api.task_add)
        route("GET", "/jobs/{job}/tasks", "Task_List", Api.task_list)
        route("POST", "/jobs/{job}/addtaskcollection", "Task_AddCollection", Api.task_add_collection)
        route("GET", "/jobs/{job}/tasks/{task}", "Task_Get", Api.task_get)
        route("PUT", "/jobs/{job}/tasks/{task}", "Task_Update", Api.task_update)
        route("DELETE", "/jobs/{job}/tasks/{task}", "Task_Delete", Api.task_delete)
        route("POST", "/jobs/{job}/tasks/{task}/terminate", "Task_Terminate", Api.task_terminate)
        route("POST", "/jobs/{job}/tasks/{task}/reactivate", "Task_Reactivate", Api.task_reactivate)
        route("GET", "/jobs/{job}/tasks/{task}/subtasksinfo", "Task_ListSubtasks", Api.task_subtasks)
        route("GET", "/jobs/{job}/tasks/{task}/files", "File_ListFromTask", Api.file_list)
        route("GET", "/jobs/{job}/tasks/{task}/files/{path}", "File_GetFromTask", Api.file_get)
        route("HEAD", "/jobs/{job}/tasks/{task}/files/{path}", "File_GetPropertiesFromTask", Api.file_head)
        route("DELETE", "/jobs/{job}/tasks/{task}/files/{path}", "File_DeleteFromTask", Api.file_delete)

    def match(self, method: str, path: str) -> tuple[str, Handler, dict[str, str]] | None:
        for route_method, pattern, operation, handler in self.routes:
            if route_method != method:
                continue
            found = pattern.match(path)
            if found:
                return operation, handler, {name: unquote(value) for name, value in found.groupdict().items()}
        return None

    # ---------------------------------------------------------------- pools

    def pool_add(self, request: Request) -> Response:
        return _created(self.service.create_pool(request.object()))

    def pool_list(self, request: Request) -> Response:
        return _page(request, "pools", self.service.list_pools(request.query))

    def pool_get(self, request: Request) -> Response:
        return _element(request, "pools", self.service.get_pool(request.params["pool"]))

    def pool_exists(self, request: Request) -> Response:
        if self.service.pool_exists(request.params["pool"]):
            return Response(200, None, _entity_headers(self.service.get_pool(request.params["pool"])))
        return Response(404, b"")

    def pool_delete(self, request: Request) -> Response:
        self.service.delete_pool(request.params["pool"])
        return Response(202)

    def pool_patch(self, request: Request) -> Response:
        self.service.update_pool(request.params["pool"], request.object(), replace=False)
        return Response(200, None, _entity_headers(self.service.get_pool(request.params["pool"])))

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
        return _page(request, "nodes", self.service.list_nodes(request.params["pool"], request.query))

    def node_get(self, request: Request) -> Response:
        return _element(request, "nodes", self.service.get_node(request.params["pool"], request.params["node"]))

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
        return _page(request, "supportedimages", BatchService.page(images, request.query, odata.IMAGE_FILTERS))

    def node_counts(self, request: Request) -> Response:
        items = self.service.pool_node_counts()
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#poolnodecounts", "value": items})

    # ---------------------------------------------------------------- jobs

    def job_add(self, request: Request) -> Response:
        return _created(self.service.create_job(request.object()))

    def job_list(self, request: Request) -> Response:
        return _page(request, "jobs", self.service.list_jobs(request.query))

    def job_get(self, request: Request) -> Response:
        return _element(request, "jobs", self.service.get_job(request.params["job"]))

    def job_patch(self, request: Request) -> Response:
        self.service.update_job(
            request.params["job"], request.object(), replace=False, if_match=request.header("If-Match")
        )
        return Response(200, None, _entity_headers(self.service.get_job(request.params["job"])))

    def job_update(self, request: Request) -> Response:
        self.service.update_job(
            request.params["job"], request.object(), replace=True, if_match=request.header("If-Match")
        )
        return Response(200, None, _entity_headers(self.service.get_job(request.params["job"])))

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
        return _page(request, "jobpreparationandreleasetaskstatuslist", result)

    def job_task_counts(self, request: Request) -> Response:
        counts = self.service.task_counts(request.params["job"])
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#taskcountsresult/@Element", **counts})

    # ---------------------------------------------------------------- tasks

    def task_add(self, request: Request) -> Response:
        return _created(self.service.create_task(request.params["job"], request.object()))

    def task_list(self, request: Request) -> Response:
        return _page(request, "tasks", self.service.list_tasks(request.params["job"], request.query))

    def task_add_collection(self, request: Request) -> Response:
        results = self.service.create_task_collection(request.params["job"], request.object())
        return Response(200, {"odata.metadata": f"{request.base_url}/$metadata#taskaddresult", "value": results})

    def task_get(self, request: Request) -> Response:
        return _element(request, "tasks", self.service.get_task(request.params["job"], request.params["task"]))

    def task_update(self, request: Request) -> Response:
        self.service.update_task(
            request.params["job"], request.params["task"], request.object(), if_match=request.header("If-Match")
        )
        return Response(
            200, None, _entity_headers(self.service.get_task(request.params["job"], request.params["task"]))
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

    # ---------------------------------------------------------------- task files

    def _files_root(self, request: Request) -> Path:
        """The task's directory, or the node's root for the node file operations."""
        if "node" in request.params:
            return self.service.node_file_root(request.params["pool"], request.params["node"])
        return self.service.task_file_root(request.params["job"], request.params["task"])

    def _task_file(self, request: Request) -> tuple[Path, Path, str]:
        root = self._files_root(request)
        name = request.params["path"].replace("\\", "/").strip("/")
        target = (root / name).resolve()
        if not target.is_relative_to(root.resolve()) or not target.exists():
            raise not_found("FileNotFound", "file")
        return root, target, name

    def _file_url(self, request: Request, name: str) -> str:
        if "node" in request.params:
            pool, node = request.params["pool"], request.params["node"]
            return f"{request.base_url}/pools/{pool}/nodes/{node}/files/{quote(name, safe='')}"
        job, task = request.params["job"], request.params["task"]
        return f"{request.base_url}/jobs/{job}/tasks/{task}/files/{quote(name, safe='')}"

    @staticmethod
    def _file_properties(path: Path) -> tuple[os.stat_result, Doc]:
        stat = path.stat()
        modified = datetime.fromtimestamp(stat.st_mtime, UTC)
        # Batch returns no creationTime for files on Linux nodes (and fileMode only there).
        properties: Doc = {
            "lastModified": clock.fmt(modified),
            "contentLength": 0 if path.is_dir() else stat.st_size,
            "contentType": "application/octet-stream",
            "fileMode": f"0{stat.st_mode & 0o777:o}",
        }
        return stat, properties

    def file_list(self, request: Request) -> Response:
        root = self._files_root(request)
        recursive = request.query.get("recursive", "false").lower() == "true"
        entries: list[Doc] = []
        if root.is_dir():
            paths = sorted(root.rglob("*") if recursive else root.iterdir())
            for index, path in enumerate(paths, 1):
                name = path.relative_to(root).as_posix()
                try:
                    _stat, properties = self._file_properties(path)
                except OSError:
                    continue
                entry: Doc = {
                    "name": name,
                    "url": self._file_url(request, name),
                    "isDirectory": path.is_dir(),
                    "properties": properties,
                    "_seq": index,
                }
                entries.append(entry)
        return _page(
            request,
            "files",
            BatchService.page(entries, request.query, odata.FILE_FILTERS, selectable=False),
        )

    def _file_headers(self, request: Request, path: Path, name: str) -> dict[str, str]:
        stat, properties = self._file_properties(path)
        return {
            "ocp-batch-file-isdirectory": "true" if path.is_dir() else "false",
            "ocp-batch-file-url": self._file_url(request, name),
            "ocp-batch-file-mode": str(properties["fileMode"]),
            "Last-Modified": clock.rfc1123(datetime.fromtimestamp(stat.st_mtime, UTC)),
            "Content-Type": mimetypes.guess_type(name)[0] or "application/octet-stream",
        }

    def file_get(self, request: Request) -> Response:
        _root, path, name = self._task_file(request)
        if path.is_dir():
            raise conflict("OperationInvalidForCurrentState", "The specified path is a directory.")
        data = path.read_bytes()
        headers = self._file_headers(request, path, name)
        byte_range = request.header("ocp-range")
        if byte_range:
            found = re.fullmatch(r"bytes=(\d*)-(\d*)", byte_range.strip())
            if not found or (not found.group(1) and not found.group(2)):
                raise BatchApiError(
                    416, "InvalidRange", "The range specified is invalid for the current size of the resource."
                )
            start = int(found.group(1)) if found.group(1) else max(0, len(data) - int(found.group(2)))
            end = int(found.group(2)) if found.group(1) and found.group(2) else len(data) - 1
            if start >= len(data) and len(data) > 0:
                raise BatchApiError(
                    416, "InvalidRange", "The range specified is invalid for the current size of the resource."
                )
            data = data[start : end + 1]
        return Response(200, data, headers)

    def file_head(self, request: Request) -> Response:
        _root, path, name = self._task_file(request)
        headers = self._file_headers(request, path, name)
        headers["Content-Length"] = str(0 if path.is_dir() else path.stat().st_size)
        return Response(200, None, headers)

    def file_delete(self, request: Request) -> Response:
        _root, path, _name = self._task_file(request)
        recursive = request.query.get("recursive", "false").lower() == "true"
        if path.is_dir():
            if any(path.iterdir()) and not recursive:
                raise conflict("DirectoryNotEmpty", "The directory is not empty; use recursive=true.")
            import shutil

            shutil.rmtree(path)
        else:
            path.unlink()
        return Response(200)


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        service: BatchService,
        account_name: str,
        account_key: str,
        faults: Faults | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        auth_failure_status: int = 401,
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.auth_failure_status = auth_failure_status
        self.service = service
        self.api = Api(service)
        self.account_name = account_name
        self.account_key = account_key
        self.faults = faults or Faults()
        self.max_body_bytes = max_body_bytes
        self.stats_lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self.total = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self, operation: str) -> None:
        with self.stats_lock:
            self.total += 1
            self.stats[operation] += 1

    def stats_body(self) -> dict[str, Any]:
        with self.stats_lock:
            return {"total": self.total, "requests": dict(self.stats)}

    def reset_stats(self) -> None:
        with self.stats_lock:
            self.total = 0
            self.stats.clear()


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections hold a thread each; close them after a while (clients reconnect).
    timeout = 300
    server: EmulatorServer
    server_version = "BatchEmulator/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _read_body(self) -> bytes | None:
        """The request body; None when it exceeds the limit (it is drained so the connection stays usable)."""
        limit = self.server.max_body_bytes
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            size = 0
            while True:
                line = self.rfile.readline(65537)
                length = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunk = self.rfile.read(length)
                self.rfile.readline(3)
                size += len(chunk)
                if size <= limit:
                    chunks.append(chunk)
            return b"".join(chunks) if size <= limit else None
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return b""
        if length > limit:
            remaining = length
            while remaining > 0:
                data = self.rfile.read(min(remaining, 65536))
                if not data:
                    break
                remaining -= len(data)
            return None
        return self.rfile.read(length)

    def _handle(self) -> None:
        started = time.perf_counter()
        request_id = str(uuid.uuid4())
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = {name: values[0] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        base_url = self._base_url()
        body = self._read_body()
        if path.startswith("/_emulator/"):
            self._emulator_endpoint(path)
            return
        matched = self.server.api.match(self.command, path)
        operation = matched[0] if matched else "Unknown"
        self.server.count(operation)
        faults = self.server.faults
        if faults.latency_ms > 0:
            time.sleep(faults.latency_ms / 1000.0)
        try:
            problem = auth.verify(
                self.command, self.path, dict(self.headers.items()), self.server.account_name, self.server.account_key
            )
            if problem is not None:
                raise BatchApiError(
                    self.server.auth_failure_status,
                    "AuthenticationFailed",
                    "Server failed to authenticate the request. Make "
                    "sure the value of Authorization header is formed correctly including the "
                    "signature.",
                    {"AuthenticationErrorDetail": problem},
                )
            if body is None:
                raise BatchApiError(
                    413,
                    "RequestBodyTooLarge",
                    "The request body is too large and exceeds the maximum permissible limit.",
                    {"MaxLimit": str(self.server.max_body_bytes)},
                )
            if matched is None:
                raise BatchApiError(
                    501,
                    "NotImplemented",
                    f"The Batch emulator does not implement {self.command} "
                    f"{path}. See docs/emulator.md for the supported operations.",
                    {"Method": self.command, "Path": path},
                )
            if "api-version" not in query:
                raise BatchApiError(
                    400,
                    "MissingRequiredQueryParameter",
                    "A query parameter that's mandatory for this request is not specified.",
                    {"QueryParameterName": "api-version"},
                )
            status = faults.pick()
            if status is not None:
                raise _fault(status)
            request = Request(self.command, path, query, dict(self.headers.items()), body, matched[2], base_url)
            response = matched[1](self.server.api, request)
            lost = faults.pick(faults.after_rate) if self.command not in ("GET", "HEAD") else None
            if lost is not None:
                logger.info(
                    "%s %s (%s) was processed; answering %d instead (--fault-after-rate)",
                    self.command,
                    path,
                    operation,
                    lost,
                )
                raise _fault(lost)
        except BatchApiError as error:
            response = Response(error.status, error.body(f"{base_url}/{ERROR_METADATA}"), dict(error.headers))
        except Exception as crash:  # the request boundary: answer 500 with the reason, never drop the connection
            logger.exception("%s %s (%s) failed inside the emulator", self.command, path, operation)
            internal = BatchApiError(
                500, "InternalError", f"The emulator failed handling {operation}: {type(crash).__name__}: {crash}"
            )
            response = Response(500, internal.body(f"{base_url}/{ERROR_METADATA}"))
        self._send(response, request_id)
        logger.debug(
            "%s %s -> %d in %.1f ms", self.command, path, response.status, (time.perf_counter() - started) * 1000
        )

    def _emulator_endpoint(self, path: str) -> None:
        if self.command == "GET" and path == "/_emulator/stats":
            self._send(Response(200, self.server.stats_body()), str(uuid.uuid4()))
        elif self.command == "POST" and path == "/_emulator/stats/reset":
            self.server.reset_stats()
            self._send(Response(200, self.server.stats_body()), str(uuid.uuid4()))
        else:
            error = BatchApiError(501, "NotImplemented", f"Unknown emulator endpoint {self.command} {path}")
            self._send(Response(501, error.body("")), str(uuid.uuid4()))

    def _send(self, response: Response, request_id: str) -> None:
        payload: bytes
        content_type: str | None = None
        if isinstance(response.body, bytes):
            payload = response.body
            content_type = response.headers.pop("Content-Type", "application/octet-stream")
        elif response.body is None:
            payload = b""
        else:
            payload = json.dumps(response.body).encode("utf-8")
            content_type = "application/json;odata=minimalmetadata"
        try:
            self.send_response(response.status)
            self.send_header("request-id", request_id)
            client_request_id = self.headers.get("client-request-id")
            if client_request_id:
                self.send_header("client-request-id", client_request_id)
            self.send_header("DataServiceVersion", "3.0")
            for name, value in response.headers.items():
                if name.lower() != "content-length":
                    self.send_header(name, value)
            if content_type:
                self.send_header("Content-Type", content_type)
            length = response.headers.get("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(payload)))
            self.end_headers()
            if self.command != "HEAD" and payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            logger.debug("client went away before the response was written")


def _fault(status: int) -> BatchApiError:
    if status == 429:
        return BatchApiError(
            429,
            "TooManyRequests",
            "The emulator injected a throttling fault (--fault-rate).",
            headers={"Retry-After": "1"},
        )
    if status == 503:
        return BatchApiError(
            503,
            "ServerBusy",
            "The server is currently unable to receive requests. Please retry your request. (injected by --fault-rate)",
            headers={"Retry-After": "1"},
        )
    if status == 500:
        return BatchApiError(
            500,
            "InternalError",
            "The server encountered an internal error. Please retry the request. (injected by --fault-rate)",
        )
    return BatchApiError(status, "InjectedFault", f"The emulator injected HTTP {status} (--fault-rate).")
