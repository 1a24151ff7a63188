"""One logging setup: readable lines locally, JSON lines elsewhere, a request id on
each (asgi-correlation-id's middleware, in app/main.py, and its filter)."""

import logging
import logging.config
import re
from typing import Any

from asgi_correlation_id import CorrelationIdFilter
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# Only safe, short ids are taken from a client, so that it cannot forge log lines.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_safe_request_id(request_id: str) -> bool:
    return _SAFE_REQUEST_ID.fullmatch(request_id) is not None


# A path segment holding an email address (POST /password-recovery/{email}),
# plain or percent-encoded.
_EMAIL_IN_PATH = re.compile(r"[^/?#&=\s]*(?:@|%40)[^/?#&=\s]*", re.IGNORECASE)


class RedactEmailFilter(logging.Filter):
    """Access lines without the email addresses some paths carry: uvicorn's
    access record has the path (with its query) as its third argument."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.name == "uvicorn.access"
            and isinstance(args, tuple)
            and len(args) > 2
        ):
            path = _EMAIL_IN_PATH.sub("[email]", str(args[2]))
            record.args = (*args[:2], path, *args[3:])
        return True


TEXT_FORMAT = "%(asctime)s %(levelname)-5s [%(correlation_id)s] %(name)s: %(message)s"
JSON_FORMAT: dict[str, Any] = {
    "()": JsonFormatter,
    "fmt": ["levelname", "name", "correlation_id", "message"],
    "timestamp": "time",
    "rename_fields": {
        "levelname": "level",
        "name": "logger",
        "correlation_id": "request_id",
        "exc_info": "exception",
    },
    # uvicorn's copy of its message with terminal colours.
    "reserved_attrs": [*RESERVED_ATTRS, "color_message"],
}


def setup_logging(*, json_lines: bool, level: str = "INFO") -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {
                "request_id": {"()": CorrelationIdFilter, "default_value": "-"},
                "redact_email": {"()": RedactEmailFilter},
            },
            "formatters": {
                "default": JSON_FORMAT if json_lines else {"format": TEXT_FORMAT}
            },
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "default",
                    "filters": ["request_id", "redact_email"],
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
