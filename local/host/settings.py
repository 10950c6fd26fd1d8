"""App settings (environment + local.settings.json) and host.json options, as `func start` reads them."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class StartupError(Exception):
    """Something in the app, its settings or host.json that stops the host from starting."""


_SETTING_REFERENCE = re.compile(r"%([^%\s]+)%")
_TIMESPAN = re.compile(r"^(?:(\d+)\.)?(\d{1,2}):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def _setting_text(name: str, value: object, source: Path) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise StartupError(f"{source}: Values.{name} must be a string, not {type(value).__name__}")


def read_settings_file(path: Path) -> dict[str, str]:
    """The `Values` of a local.settings.json file."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StartupError(f"settings file {path} does not exist") from None
    except (OSError, ValueError) as error:
        raise StartupError(f"settings file {path}: {error}") from None
    if not isinstance(document, dict):
        raise StartupError(f"settings file {path}: expected a JSON object")
    if document.get("IsEncrypted") is True:
        raise StartupError(f"settings file {path}: encrypted settings are not supported")
    values = document.get("Values", {})
    if not isinstance(values, dict):
        raise StartupError(f"settings file {path}: Values must be an object")
    return {str(name): _setting_text(str(name), value, path) for name, value in values.items()}


class AppSettings(Mapping[str, str]):
    """The environment, plus a settings file's Values for names the environment does not set."""

    def __init__(self, environ: Mapping[str, str], file_values: Mapping[str, str] | None = None) -> None:
        self._file_values = {k: v for k, v in (file_values or {}).items() if k not in environ}
        self._values = {**self._file_values, **environ}

    def export_to(self, environ: MutableMapping[str, str]) -> None:
        """Put the file's values into the process environment, where functions read them."""
        for name, value in self._file_values.items():
            environ.setdefault(name, value)

    def __getitem__(self, name: str) -> str:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def resolve(self, text: str, where: str) -> str:
        """Replace each `%NAME%` by the app setting NAME; a missing one is a StartupError."""

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self._values:
                raise StartupError(f"{where} refers to app setting %{name}%, which is not set")
            return self._values[name]

        return _SETTING_REFERENCE.sub(substitute, text)


def parse_timespan(text: str, where: str) -> float:
    """Seconds in a .NET TimeSpan such as `00:00:30` or `1.00:00:00`."""
    match = _TIMESPAN.match(text.strip())
    if not match:
        raise StartupError(f"{where}: {text!r} is not a TimeSpan like 00:00:30")
    days, hours, minutes = (int(group or 0) for group in match.groups()[:3])
    return days * 86400 + hours * 3600 + minutes * 60 + float(match.group(4))


_LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}


@dataclass(frozen=True)
class HostOptions:
    """What the dev host takes from host.json (the real host's defaults where it has them)."""

    route_prefix: str = "api"
    max_dequeue_count: int = 5
    batch_size: int = 16
    new_batch_threshold: int = 8
    # None: back off exponentially (1 s, 2 s, 4 s ... 60 s) instead of the real host's fixed 0.
    visibility_timeout: float | None = None
    max_polling_interval: float = 1.0
    message_encoding: str = "base64"
    log_level: int = logging.INFO

    @classmethod
    def from_host_json(cls, path: Path) -> HostOptions:
        if not path.exists():
            return cls()
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise StartupError(f"{path}: {error}") from None
        return cls.from_document(document, str(path))

    @classmethod
    def from_document(cls, document: Any, where: str = "host.json") -> HostOptions:
        try:
            return cls._from_document(document, where)
        except (TypeError, ValueError, AttributeError) as error:
            raise StartupError(f"{where}: {error}") from None

    @classmethod
    def _from_document(cls, document: Any, where: str) -> HostOptions:
        if not isinstance(document, dict):
            raise StartupError(f"{where}: expected a JSON object")
        extensions = document.get("extensions") or {}
        queues = extensions.get("queues") or {}
        http = extensions.get("http") or {}
        default = cls()
        batch_size = int(queues.get("batchSize", default.batch_size))
        if not 1 <= batch_size <= 32:
            raise StartupError(f"{where}: extensions.queues.batchSize must be 1-32")
        max_dequeue_count = int(queues.get("maxDequeueCount", default.max_dequeue_count))
        if max_dequeue_count < 1:
            raise StartupError(f"{where}: extensions.queues.maxDequeueCount must be at least 1")
        encoding = str(queues.get("messageEncoding", default.message_encoding)).lower()
        if encoding not in ("base64", "none"):
            raise StartupError(f"{where}: extensions.queues.messageEncoding must be base64 or none")
        visibility = queues.get("visibilityTimeout")
        polling = queues.get("maxPollingInterval")
        level_name = str(((document.get("logging") or {}).get("logLevel") or {}).get("default", "Information"))
        return cls(
            route_prefix=str(http.get("routePrefix", default.route_prefix)).strip("/"),
            max_dequeue_count=max_dequeue_count,
            batch_size=batch_size,
            new_batch_threshold=int(queues.get("newBatchThreshold", batch_size // 2)),
            visibility_timeout=(
                None if visibility is None
                else parse_timespan(str(visibility), f"{where}: extensions.queues.visibilityTimeout")),
            # The real default is one minute; locally the brief is "about every second when idle".
            max_polling_interval=(
                default.max_polling_interval if polling is None
                else min(parse_timespan(str(polling), f"{where}: extensions.queues.maxPollingInterval"),
                         default.max_polling_interval)),
            message_encoding=encoding,
            log_level=_LOG_LEVELS.get(level_name.lower(), logging.INFO),
        )

    def retry_delay(self, dequeue_count: int) -> float:
        """How long a failed message stays invisible before its next attempt."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return float(min(2 ** max(dequeue_count - 1, 0), 60))
