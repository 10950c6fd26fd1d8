"""Calling a user function: arguments from its bindings, queue outputs after success, one log per failure."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import azure.functions as func
from azure.functions._abc import RetryContext, RpcException, TraceContext

from .bindings import FunctionSpec, QueueOutput
from .storage import StorageAccounts, encode_message, ensure_queue

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The function whose invocation is running on this thread; logging shows it on every record.
current_function: contextvars.ContextVar[str] = contextvars.ContextVar("current_function", default="host")


class InvocationFailed(Exception):
    """The user function raised; its traceback has been logged already."""

    def __init__(self, function_name: str, cause: BaseException) -> None:
        super().__init__(f"function '{function_name}' failed: {cause!r}")
        self.function_name = function_name
        self.cause = cause


class OutValue(func.Out[T], Generic[T]):
    """The value an output binding argument receives (`func.Out[str]`)."""

    def __init__(self) -> None:
        self._value: T | None = None

    def set(self, val: T) -> None:
        self._value = val

    def get(self) -> T:
        return self._value  # type: ignore[return-value]


class _TraceContext(TraceContext):
    def __init__(self) -> None:
        self._trace_parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-00"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._trace_parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _NoException(RpcException):
    @property
    def source(self) -> str:
        return ""

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return ""


class _RetryContext(RetryContext):
    def __init__(self, retry_count: int) -> None:
        self._retry_count = retry_count

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> RpcException:
        return _NoException()


class InvocationContext(func.Context):
    """What a function receives for a parameter named `context`."""

    _thread_local = threading.local()

    def __init__(self, invocation_id: str, function_name: str, retry_count: int = 0) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._trace_context = _TraceContext()
        self._retry_context = _RetryContext(retry_count)

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return "."

    @property
    def trace_context(self) -> TraceContext:
        return self._trace_context

    @property
    def retry_context(self) -> RetryContext:
        return self._retry_context


def _message_bodies(value: Any) -> Iterable[bytes]:
    if value is None:
        return
    if isinstance(value, list | tuple):
        for item in value:
            yield from _message_bodies(item)
    elif isinstance(value, str):
        yield value.encode("utf-8")
    elif isinstance(value, bytes | bytearray):
        yield bytes(value)
    elif isinstance(value, func.QueueMessage):
        yield value.get_body()
    else:
        yield json.dumps(value).encode("utf-8")


class Invoker:
    """Runs user functions with their binding values; queue outputs are sent when a function succeeds."""

    def __init__(self, accounts: StorageAccounts, message_encoding: str) -> None:
        self._accounts = accounts
        self._message_encoding = message_encoding
        self._ensured_queues: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def invoke(self, spec: FunctionSpec, trigger_value: Any, reason: str, retry_count: int = 0) -> Any:
        """Call the function; raise InvocationFailed (after logging the traceback once) if it raises."""
        invocation_id = str(uuid.uuid4())
        token = current_function.set(spec.name)
        try:
            logger.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
            started = time.monotonic()
            outputs = {output.arg_name: OutValue[Any]() for output in spec.queue_outputs
                       if output.arg_name != "$return"}
            try:
                # Inside the try: reading a blob for a `bytes` parameter can fail like the function.
                kwargs: dict[str, Any] = {spec.trigger.arg_name: _as_declared(trigger_value, spec.trigger_data),
                                          **outputs}
                if "context" in inspect.signature(spec.user_function).parameters and "context" not in kwargs:
                    kwargs["context"] = InvocationContext(invocation_id, spec.name, retry_count)
                result = spec.user_function(**kwargs)
                if inspect.isawaitable(result):
                    result = asyncio.run(_await(result))
                self._send_outputs(spec.queue_outputs, outputs, result)
            except Exception as error:
                logger.exception("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
                                 spec.name, invocation_id, (time.monotonic() - started) * 1000)
                raise InvocationFailed(spec.name, error) from error
            logger.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
                        spec.name, invocation_id, (time.monotonic() - started) * 1000)
            return result
        finally:
            current_function.reset(token)

    def _send_outputs(self, declared: tuple[QueueOutput, ...], outputs: dict[str, OutValue[Any]],
                      result: Any) -> None:
        for output in declared:
            value = result if output.arg_name == "$return" else outputs[output.arg_name].get()
            bodies = list(_message_bodies(value))
            if not bodies:
                continue
            queue = self._accounts.get(output.connection).queue(output.queue_name)
            key = (output.connection, output.queue_name)
            with self._lock:
                if key not in self._ensured_queues:
                    ensure_queue(queue)
                    self._ensured_queues.add(key)
            for body in bodies:
                queue.send_message(encode_message(body, self._message_encoding))


def _as_declared(value: Any, data: str | None) -> Any:
    """A trigger parameter annotated `bytes` or `str` gets the body or content, as from the worker."""
    if data is None:
        return value
    if isinstance(value, func.QueueMessage):
        content = value.get_body()
    elif callable(getattr(value, "read", None)):
        content = value.read()
    else:
        return value
    return content.decode("utf-8") if data == "str" else content


async def _await(awaitable: Any) -> Any:
    return await awaitable
