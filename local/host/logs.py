"""Host logging: every record names the function whose invocation wrote it."""

from __future__ import annotations

import logging
import sys

from .invocation import current_function

FORMAT = "%(asctime)s %(levelname)s [%(function)s] %(name)s: %(message)s"


class FunctionNameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.function = current_function.get()
        return True


def configure_logging(level: int) -> None:
    """Log to stderr (stdout carries only the READY line)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(FunctionNameFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The storage SDKs log every request and response at INFO.
    logging.getLogger("azure").setLevel(max(level, logging.WARNING))
