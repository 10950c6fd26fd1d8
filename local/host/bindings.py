"""The functions of a v2-model FunctionApp, read from their own binding declarations."""

from __future__ import annotations

import enum
import inspect
import re
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shared.ncrontab import Schedule, ScheduleError, parse_schedule

from .settings import AppSettings, StartupError

DEFAULT_CONNECTION = "AzureWebJobsStorage"
_QUEUE_NAME = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
_CONTAINER_NAME = _QUEUE_NAME


class FunctionApp(Protocol):
    def get_functions(self) -> list[Any]: ...


@dataclass(frozen=True)
class BlobTrigger:
    arg_name: str
    container: str
    name_pattern: str  # the part of the path after the container, e.g. "{name}" or "raw/{name}.csv"
    connection: str
    event_grid: bool

    @property
    def prefix(self) -> str:
        """The literal start of blob names this trigger can match (for listing)."""
        return self.name_pattern.split("{", 1)[0]

    def matches(self, blob_name: str) -> bool:
        return _blob_pattern(self.name_pattern).fullmatch(blob_name) is not None


@dataclass(frozen=True)
class TimerTrigger:
    arg_name: str
    schedule: Schedule
    run_on_startup: bool
    use_monitor: bool | None


@dataclass(frozen=True)
class QueueTrigger:
    arg_name: str
    queue_name: str
    connection: str


@dataclass(frozen=True)
class HttpTrigger:
    arg_name: str
    route: str
    methods: frozenset[str] | None  # None: every method
    auth_level: str


@dataclass(frozen=True)
class EventGridTrigger:
    arg_name: str


Trigger = BlobTrigger | TimerTrigger | QueueTrigger | HttpTrigger | EventGridTrigger


@dataclass(frozen=True)
class QueueOutput:
    arg_name: str  # "$return" for the function's return value
    queue_name: str
    connection: str


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    trigger: Trigger
    queue_outputs: tuple[QueueOutput, ...]
    user_function: Callable[..., Any]
    # "str" or "bytes" when the trigger parameter is annotated so (the worker then passes the
    # message body or blob content instead of the binding object); "sdk" when it is annotated with an
    # SDK binding type (azurefunctions-extensions-*: the worker passes an SDK client, never the content);
    # None otherwise.
    trigger_data: str | None = None
    sdk_type: type | None = None

    @property
    def full_name(self) -> str:
        """The id the Functions host gives the function (receipts, webhooks)."""
        return f"Host.Functions.{self.name}"


def _blob_pattern(name_pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[^}]*\})", name_pattern)
    regex = "".join(".+?" if part.startswith("{") else re.escape(part) for part in parts)
    return re.compile(regex, re.DOTALL)


def _text(value: object) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value)


class _BindingReader:
    """Reads one binding's attributes, resolving %SETTING% and naming the function on errors."""

    def __init__(self, function_name: str, binding: Any, settings: AppSettings) -> None:
        self.function_name = function_name
        self.binding = binding
        self.settings = settings
        self.where = f"function '{function_name}', binding '{binding.name}' ({binding.type})"

    def optional(self, attribute: str) -> str | None:
        value = getattr(self.binding, attribute, None)
        if value is None or value == "":
            return None
        return self.settings.resolve(_text(value), f"{self.where} {attribute}")

    def required(self, attribute: str) -> str:
        value = self.optional(attribute)
        if value is None:
            raise StartupError(f"{self.where}: {attribute} is required")
        return value

    def connection(self) -> str:
        # `connection` names an app setting; it is not itself a %reference%.
        value = getattr(self.binding, "connection", None)
        return _text(value).strip("%") if value else DEFAULT_CONNECTION

    def queue_name(self) -> str:
        name = self.required("queue_name")
        if not _QUEUE_NAME.match(name):
            raise StartupError(f"{self.where}: {name!r} is not a valid queue name "
                               "(3-63 lowercase letters, digits and single dashes)")
        return name


def _blob_trigger(reader: _BindingReader) -> BlobTrigger:
    path = reader.required("path")
    container, slash, name_pattern = path.partition("/")
    if not slash or not name_pattern:
        raise StartupError(f"{reader.where}: path {path!r} must be 'container/pattern', e.g. 'input/{{name}}'")
    if not _CONTAINER_NAME.match(container):
        raise StartupError(f"{reader.where}: {container!r} is not a valid container name")
    source = reader.optional("source") or "LogsAndContainerScan"
    return BlobTrigger(reader.binding.name, container, name_pattern, reader.connection(),
                       event_grid=source.lower() == "eventgrid")


def _timer_trigger(reader: _BindingReader) -> TimerTrigger:
    expression = reader.required("schedule")
    try:
        schedule = parse_schedule(expression)
    except ScheduleError as error:
        raise StartupError(f"{reader.where}: {error}") from None
    use_monitor = getattr(reader.binding, "use_monitor", None)
    return TimerTrigger(reader.binding.name, schedule,
                        run_on_startup=bool(getattr(reader.binding, "run_on_startup", False)),
                        use_monitor=None if use_monitor is None else bool(use_monitor))


def _http_trigger(reader: _BindingReader, function_name: str) -> HttpTrigger:
    methods = getattr(reader.binding, "methods", None)
    auth_level = getattr(reader.binding, "auth_level", None)
    route = reader.optional("route") or function_name
    return HttpTrigger(
        reader.binding.name,
        route=route.strip("/"),
        methods=frozenset(_text(method).upper() for method in methods) if methods else None,
        auth_level=_text(auth_level).lower() if auth_level else "function",
    )


def _read_function(function: Any, settings: AppSettings) -> FunctionSpec:
    name = function.get_function_name()
    triggers: list[Trigger] = []
    outputs: list[QueueOutput] = []
    unsupported: list[str] = []
    for binding in function.get_bindings():
        reader = _BindingReader(name, binding, settings)
        kind = _text(binding.type)
        # BindingDirection: IN = 0, OUT = 1, INOUT = 2 (get_bindings() gives the int).
        is_output = _text(getattr(binding, "direction", "")) in ("1", "OUT")
        if kind == "blobTrigger":
            triggers.append(_blob_trigger(reader))
        elif kind == "timerTrigger":
            triggers.append(_timer_trigger(reader))
        elif kind == "queueTrigger":
            triggers.append(QueueTrigger(binding.name, reader.queue_name(), reader.connection()))
        elif kind == "httpTrigger":
            triggers.append(_http_trigger(reader, name))
        elif kind == "eventGridTrigger":
            triggers.append(EventGridTrigger(binding.name))
        elif kind == "http" and is_output:
            continue  # the HTTP response: the function's return value
        elif kind == "queue" and is_output:
            outputs.append(QueueOutput(binding.name, reader.queue_name(), reader.connection()))
        else:
            unsupported.append(f"{kind} ({binding.name})")
    if unsupported:
        raise StartupError(f"function '{name}': the dev host does not support binding(s) "
                           f"{', '.join(unsupported)}")
    if len(triggers) != 1:
        raise StartupError(f"function '{name}' must have exactly one trigger, has {len(triggers)}")
    user_function = function.get_user_function()
    trigger_data = _check_parameters(name, user_function, triggers[0].arg_name,
                                     [output.arg_name for output in outputs])
    sdk_type = _sdk_type(user_function, triggers[0].arg_name)
    if sdk_type is not None and not isinstance(triggers[0], BlobTrigger):
        raise StartupError(f"function '{name}': the dev host binds SDK types for blob triggers only")
    return FunctionSpec(name, triggers[0], tuple(outputs), user_function,
                        "sdk" if sdk_type is not None else trigger_data, sdk_type)


def _sdk_type(user_function: Callable[..., Any], trigger_arg: str) -> type | None:
    """The trigger parameter's SDK binding type (e.g. azurefunctions.extensions.bindings.blob.BlobClient)."""
    try:
        from azurefunctions.extensions.base import SdkType
    except ImportError:  # the app uses no SDK binding types
        return None
    try:
        annotation: Any = typing.get_type_hints(user_function).get(trigger_arg)
    except Exception:
        return None
    return annotation if isinstance(annotation, type) and issubclass(annotation, SdkType) else None


def _check_parameters(name: str, user_function: Callable[..., Any], trigger_arg: str,
                      output_args: list[str]) -> str | None:
    """As the worker does when it indexes: each binding has a parameter and each parameter a binding."""
    parameters = inspect.signature(user_function).parameters
    bound = {trigger_arg, *output_args} - {"$return"}
    for binding_name in sorted(bound - parameters.keys()):
        raise StartupError(f"function '{name}': binding '{binding_name}' has no parameter of that name")
    for parameter in parameters.values():
        if (parameter.name not in bound and parameter.name != "context"
                and parameter.default is inspect.Parameter.empty
                and parameter.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)):
            raise StartupError(f"function '{name}': parameter '{parameter.name}' has no binding")
    try:
        annotation: Any = typing.get_type_hints(user_function).get(trigger_arg)
    except Exception:  # unresolvable string annotations: fall back to the text
        annotation = parameters[trigger_arg].annotation
    if annotation in (str, "str"):
        return "str"
    if annotation in (bytes, "bytes"):
        return "bytes"
    return None


def read_functions(app: FunctionApp, settings: AppSettings) -> list[FunctionSpec]:
    """Every function of the app with its trigger and outputs; StartupError names what is wrong."""
    # get_functions() may be called once per app object: a second call raises.
    try:
        declared = app.get_functions()
    except Exception as error:  # the library's own indexing checks (no trigger, duplicate names, ...)
        raise StartupError(f"the app's functions cannot be read: {error}") from error
    functions = [_read_function(function, settings) for function in declared]
    _check_unique(spec.name for spec in functions)
    return functions


def _check_unique(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise StartupError(f"two functions are named '{name}'")
        seen.add(name.lower())
