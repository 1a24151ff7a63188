"""One logging setup: readable lines locally, JSON lines elsewhere, a request id on each."""

import json
import logging
import logging.config
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


# A path segment holding an email address (POST /password-recovery/{email}),
# plain or percent-encoded.
_EMAIL_IN_PATH = re.compile(r"[^/?#&=\s]*(?:@|%40)[^/?#&=\s]*", re.IGNORECASE)


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
            path = _EMAIL_IN_PATH.sub("[email]", str(args[2]))
            record.args = (*args[:2], path, *args[3:])
        elif record.name.startswith("procrastinate"):
            record.msg = _EMAIL_ADDRESS.sub(r"*@\1", record.getMessage())
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(*, json_lines: bool, level: str = "INFO") -> None:
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if json_lines
        else {
            "format": "%(asctime)s %(levelname)-5s [%(request_id)s] %(name)s: %(message)s"
        }
    )
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {
                "request_id": {"()": RequestIdFilter},
                "redact_email": {"()": RedactEmailFilter},
            },
            "formatters": {"default": formatter},
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


class RequestIdMiddleware:
    """Takes a well-formed `X-Request-ID` or makes one; logs and the response carry it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        # Only safe, short ids are echoed, so a client cannot forge log lines.
        request_id = (
            incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        )
        token = request_id_var.set(request_id)

        async def send_with_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            request_id_var.reset(token)
