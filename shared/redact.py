"""Keep SAS signatures and keys out of what batchdrop writes: manifests, ledger rows and log lines.

Connection errors from urllib3/requests carry the full request URL, query included; a SAS URL's query is a
credential. Everything that can hold a message from outside (Batch failure info, an SDK error's text) passes
through `redact` before it is stored or logged, and `install_log_redaction` covers every log record as well.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "REDACTED"
# The query parameters that make a SAS (or a signed URL) a credential; their values are replaced.
# sig: the signature; skoid..skv: a user delegation key's identity; AccountKey/SharedAccessSignature: connection
# strings.
_SECRET_PARAMETER = re.compile(
    r"(?i)\b(sig|signature|skoid|sktid|skt|ske|sks|skv|saoid|suoid|AccountKey|SharedAccessSignature)"
    r"(=|%3D)([^&\s;'\"<>)\]]+)"
)
_lock = threading.Lock()
_installed = False


def redact(text: str) -> str:
    """`text` with the value of every SAS signature or key parameter replaced by REDACTED."""
    if not text:
        return text
    return _SECRET_PARAMETER.sub(lambda match: f"{match.group(1)}{match.group(2)}{REDACTED}", text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (str, list, dict) with every string in it redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value


def install_log_redaction() -> None:
    """Redact every log record made from now on in this process: its message, arguments and traceback.

    A record factory, not a handler filter: the Functions host installs its own handlers, and a filter on a
    logger does not see records that its children propagate.
    """
    global _installed
    with _lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make_record(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a malformed %-format: leave it to the handler to report
                return record
            record.msg, record.args = redact(message), None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            return record

        logging.setLogRecordFactory(redacting_factory)
        _installed = True
