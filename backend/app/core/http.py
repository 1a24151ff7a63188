from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.config import settings

# The one place the API's security headers are set: Traefik sets none on its
# router (traefik/dynamic/middlewares.yml), so they hold without the proxy too.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# Over HTTPS only (behind the proxy: X-Forwarded-Proto from a trusted address).
HSTS = "max-age=31536000; includeSubDomains"
# API answers are data, never a page: nothing may load, run or frame them.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

# Polled by Docker, Traefik and Prometheus: not worth a trace each (app/core/tracing.py).
UNTRACED_PATHS = frozenset({"/metrics", f"{settings.API_V1_STR}/utils/health-check/"})


def is_untraced(scope: Scope) -> bool:
    return scope["path"] in UNTRACED_PATHS


def docs_content_security_policy(script_hashes: list[str]) -> str:
    """The docs pages' policy: everything from this origin only; inline scripts
    only those of the pages (by hash); inline styles, which Swagger UI and ReDoc
    set on their elements; data: images (Swagger UI's icons); ReDoc's search
    runs in a worker made from a blob."""
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {' '.join(script_hashes)}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )


class SecurityHeadersMiddleware:
    """Safe headers on every response, a Content-Security-Policy for the docs
    pages (`docs_csp` on exactly the paths `docs_pages`) and a strict one for
    everything else; API answers (user data, tokens) are never stored by caches."""

    def __init__(
        self,
        app: ASGIApp,
        docs_csp: str = API_CSP,
        docs_pages: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.docs_csp = docs_csp
        self.docs_pages = docs_pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith(settings.API_V1_STR)
        is_https = scope.get("scheme") == "https"
        csp = self.docs_csp if scope["path"] in self.docs_pages else API_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", csp)
                if is_https:
                    headers.setdefault("Strict-Transport-Security", HSTS)
                if is_api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """413 for a request body over `max_bytes`, before it is read: at once when
    Content-Length says so, else (a chunked upload) as soon as the bytes received
    pass the limit. A body with a Content-Length within the limit is left alone:
    the server delivers exactly that many bytes."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = f"Request body too large: the limit is {max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = True
        if length is not None and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self.detail}, status_code=413)
            await response(scope, receive, send)
            return
        if length is not None or not chunked:
            await self.app(scope, receive, send)
            return

        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised where the route reads its body: the app's usual
                    # HTTPException answer, with its headers.
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        await self.app(scope, receive_within_limit, send)
