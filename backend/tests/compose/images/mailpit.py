"""The part of Mailpit's contract the stack uses: SMTP on 1025 (no auth), and on
8025 GET /readyz, /api/v1/messages (newest first) and /api/v1/message/{ID}."""

import json
import threading
import uuid
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import getaddresses
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

MESSAGES: list[dict[str, Any]] = []
LOCK = threading.Lock()


def addresses(value: str | None) -> list[dict[str, str]]:
    return [{"Name": n, "Address": a} for n, a in getaddresses([value or ""]) if a]


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        text_part = parsed.get_body(("plain",))
        html_part = parsed.get_body(("html",))
        text = text_part.get_content() if text_part else ""
        html = html_part.get_content() if html_part else ""
        message = {
            "ID": uuid.uuid4().hex,
            "MessageID": parsed.get("Message-ID", ""),
            "From": (addresses(parsed.get("From")) or [{}])[0],
            "To": addresses(parsed.get("To")),
            "Subject": parsed.get("Subject", ""),
            "Snippet": (text or html)[:250],
            "Text": text,
            "HTML": html,
        }
        with LOCK:
            MESSAGES.insert(0, message)
        return "250 OK"


class Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        with LOCK:
            messages = list(MESSAGES)
        if self.path == "/readyz":
            self.answer(200, {})
        elif self.path.startswith("/api/v1/messages"):
            summaries = [
                {k: v for k, v in m.items() if k not in ("Text", "HTML")}
                for m in messages
            ]
            self.answer(
                200,
                {"total": len(messages), "count": len(messages), "messages": summaries},
            )
        elif self.path.startswith("/api/v1/message/"):
            wanted = self.path.rsplit("/", 1)[1]
            found = [m for m in messages if m["ID"] == wanted]
            self.answer(200, found[0]) if found else self.answer(404, {})
        else:
            self.answer(404, {})

    def answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


if __name__ == "__main__":
    smtp = Controller(Handler(), hostname="0.0.0.0", port=1025)
    smtp.start()
    ThreadingHTTPServer(("0.0.0.0", 8025), Api).serve_forever()
