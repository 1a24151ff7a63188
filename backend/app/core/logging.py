"""One logging setup: readable lines locally, JSON lines elsewhere, a request id on
each (asgi-correlation-id's middleware, in app/main.py, and its filter) and, when
tracing is on, the trace id of the current span beside it (app/core/tracing.py)."""

import json
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import Any

from asgi_correlation_id import CorrelationIdFilter

# Only safe, short ids are taken from a client, so that it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_safe_request_id(request_id: str) -> bool:
    return _SAFE_REQUEST_ID.fullmatch(request_id) is not None


# A path segment holding an email address (POST /password-recovery/{email}),
# plain or percent-encoded.
_EMAIL_IN_PATH = re.compile(r"[^/?#&=\s]*(?:@|%40)[^/?#&=\s]*", re.IGNORECASE)


def hide_emails(path: str) -> str:
    """`path` (with its query, if any) without the email addresses in it."""
    return _EMAIL_IN_PATH.sub("[email]", path)


# An address in a job's arguments, as procrastinate logs them ("email='a@b.c'").
_EMAIL_ADDRESS = re.compile(r"[^\s'\"@]+@([^\s'\"@,)]+)")


class RedactEmailFilter(logging.Filter):
    """Lines without the email addresses some paths carry (uvicorn's access
    record has the path, with its query, as its third argument) or job
    arguments hold (procrastinate's worker names each job with them): only
    the domain stays, as in app/emails.py."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.name == "uvicorn.access"
            and isinstance(args, tuple)
            and len(args) > 2
        ):
            path = hide_emails(str(args[2]))
            record.args = (*args[:2], path, *args[3:])
        elif record.name.startswith("procrastinate"):
            record.msg = _EMAIL_ADDRESS.sub(r"*@\1", record.getMessage())
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """These fields only. python-json-logger would add every `extra` of a record:
    procrastinate's carry the job's arguments, email addresses included."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "correlation_id", "-"),
        }
        if trace_id := getattr(record, "trace_id", None):
            entry["trace_id"] = trace_id
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-5s [%(correlation_id)s] %(name)s: %(message)s"
TRACED_TEXT_FORMAT = "%(asctime)s %(levelname)-5s [%(correlation_id)s %(trace_id)s] %(name)s: %(message)s"


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the record's trace id beside the request id if it has one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self.traced = logging.Formatter(TRACED_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if hasattr(record, "trace_id"):
            return self.traced.format(record)
        return super().format(record)


def setup_logging(
    *, json_lines: bool, level: str = "INFO", trace_ids: bool = False
) -> None:
    """`trace_ids`: the current span's trace id on each line that has one (only
    with tracing on: its filter's module loads the OpenTelemetry SDK)."""
    filters: dict[str, dict[str, Any]] = {
        "request_id": {"()": CorrelationIdFilter, "default_value": "-"},
        "redact_email": {"()": RedactEmailFilter},
    }
    if trace_ids:
        filters["trace_id"] = {"()": "app.core.tracing.TraceIdFilter"}
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": filters,
            "formatters": {
                "default": {"()": JsonFormatter if json_lines else TextFormatter}
            },
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "filters": list(filters),
                }
            },
            "root": {"handlers": ["default"], "level": level},
            # The servers' loggers write through the root handler at the root's
            # level: gunicorn's uvicorn worker gives them their own INFO level,
            # which let access lines through under LOG_LEVEL=WARNING.
            "loggers": {
                name: {"handlers": [], "propagate": True, "level": "NOTSET"}
                for name in (
                    "uvicorn",
                    "uvicorn.error",
                    "uvicorn.access",
                    "gunicorn.error",
                )
            },
        }
    )
