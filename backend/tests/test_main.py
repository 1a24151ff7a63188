import base64
import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
from asgi_correlation_id import correlation_id
from fastapi.routing import APIRoute, APIRouter
from httpx import AsyncClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import format_trace_id

from app.api.routes import audit_events, auth, items, login, private, users, utils
from app.core.config import settings
from app.core.logging import setup_logging
from app.main import app

OPENAPI = f"{settings.API_V1_STR}/openapi.json"
USERS_ME = f"{settings.API_V1_STR}/users/me"
HEALTH_CHECK = f"{settings.API_V1_STR}/utils/health-check/"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def make_record(message: str = "hello %s", *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        name="app.test",
        level=logging.WARNING,
        pathname=__file__,
        lineno=1,
        msg=message,
        args=args,
        exc_info=None,
    )


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    setup_logging(json_lines=settings.ENVIRONMENT != "local", level=settings.LOG_LEVEL)


class TestRoot:
    async def test_root_hello_with_docs_links(self, client: AsyncClient) -> None:
        response = await client.get("/")

        assert response.status_code == 200
        body = response.json()
        assert body["message"] == "Hello, world!"
        assert body["docs"] == "/docs"
        assert body["redoc"] == "/redoc"
        assert body["openapi"] == OPENAPI


class TestOpenApi:
    async def test_openapi_operation_ids_tag_and_function(
        self, client: AsyncClient
    ) -> None:
        response = await client.get(OPENAPI)

        assert response.status_code == 200
        paths = response.json()["paths"]
        api_routes = [
            (settings.API_V1_STR + route.path, route)
            for module in (audit_events, auth, items, login, private, users, utils)
            for name in ("router", "public_router")
            for route in getattr(module, name, APIRouter()).routes
            if isinstance(route, APIRoute)
        ]
        root_routes = [
            (route.path, route) for route in app.routes if isinstance(route, APIRoute)
        ]
        expected = {
            (path, method.lower()): f"{route.tags[0]}-{route.endpoint.__name__}"
            for path, route in api_routes + root_routes
            for method in route.methods or ()
        }
        actual = {
            (path, method): operation["operationId"]
            for path, operations in paths.items()
            for method, operation in operations.items()
        }
        assert actual == expected
        for operations in paths.values():
            for operation in operations.values():
                assert operation["tags"], operation["operationId"]

    async def test_openapi_contains_contract_operations(
        self, client: AsyncClient
    ) -> None:
        response = await client.get(OPENAPI)

        operation_ids = {
            operation["operationId"]
            for operations in response.json()["paths"].values()
            for operation in operations.values()
        }
        assert {
            "items-read_items",
            "items-read_item",
            "items-create_item",
            "items-update_item",
            "items-delete_item",
            "login-login_access_token",
            "users-register_user",
            "utils-health_check",
            "utils-test_email",
            "private-create_user",
        } <= operation_ids

    @pytest.mark.parametrize("path", ["/docs", "/redoc"])
    async def test_docs_served_as_html(self, client: AsyncClient, path: str) -> None:
        response = await client.get(path)

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert OPENAPI in response.text


class TestDocsWithoutInternet:
    @pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
    async def test_pages_load_nothing_from_elsewhere(
        self, client: AsyncClient, path: str
    ) -> None:
        page = (await client.get(path)).text
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), page
        for asset in re.findall(r"""(?:src|href)=["']?(/[^"' >]+)""", page):
            assert (await client.get(asset)).status_code == 200, asset

    @pytest.mark.parametrize(
        ("asset", "content_type"),
        [
            ("swagger-ui-bundle.js", "text/javascript"),
            ("swagger-ui.css", "text/css"),
            ("redoc.standalone.js", "text/javascript"),
            ("favicon.png", "image/png"),
        ],
    )
    async def test_assets_come_from_the_app(
        self, client: AsyncClient, asset: str, content_type: str
    ) -> None:
        response = await client.get(f"/docs/static/{asset}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(content_type)
        assert b"cdn.redoc.ly" not in response.content

    async def test_content_security_policies(self, client: AsyncClient) -> None:
        api = await client.get(HEALTH_CHECK)
        assert api.headers["content-security-policy"] == (
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
        )
        docs = await client.get("/docs")
        policy = dict(
            directive.split(" ", 1)
            for directive in docs.headers["content-security-policy"].split("; ")
        )
        # Inline scripts: only the page's own, by hash.
        (inline,) = re.findall(r"<script>(.*?)</script>", docs.text, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"].split()
        assert "'unsafe-inline'" not in policy["script-src"]
        assert policy["default-src"] == "'none'"
        assert policy["connect-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"


class TestRequestId:
    async def test_request_id_generated(self, client: AsyncClient) -> None:
        response = await client.get(HEALTH_CHECK)

        assert GENERATED_ID.fullmatch(response.headers["X-Request-ID"])

    async def test_request_id_unique_per_request(self, client: AsyncClient) -> None:
        first = await client.get(HEALTH_CHECK)
        second = await client.get(HEALTH_CHECK)

        assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]

    async def test_request_id_well_formed_echoed(self, client: AsyncClient) -> None:
        response = await client.get(HEALTH_CHECK, headers={"X-Request-ID": "abc-123"})

        assert response.headers["X-Request-ID"] == "abc-123"

    async def test_request_id_on_error_responses(self, client: AsyncClient) -> None:
        response = await client.get(USERS_ME, headers={"X-Request-ID": "abc-401"})

        assert response.status_code == 401
        assert response.headers["X-Request-ID"] == "abc-401"

    @pytest.mark.parametrize(
        "incoming",
        ["x" * 200, "has spaces in it", "<script>", "a;b", "ünïcode"],
    )
    async def test_request_id_malicious_replaced(
        self, client: AsyncClient, incoming: str
    ) -> None:
        response = await client.get(
            HEALTH_CHECK, headers=[(b"X-Request-ID", incoming.encode())]
        )

        returned = response.headers.get_list("X-Request-ID")
        assert len(returned) == 1
        assert GENERATED_ID.fullmatch(returned[0])
        assert returned[0] != incoming


class TestCors:
    async def test_cors_preflight_frontend_allowed(self, client: AsyncClient) -> None:
        origin = settings.FRONTEND_HOST

        response = await client.options(
            USERS_ME,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )

        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert (
            "authorization" in response.headers["access-control-allow-headers"].lower()
        )
        assert response.headers["access-control-allow-credentials"] == "true"

    async def test_cors_simple_request_exposes_request_id(
        self, client: AsyncClient
    ) -> None:
        origin = settings.FRONTEND_HOST

        response = await client.get(HEALTH_CHECK, headers={"Origin": origin})

        assert response.headers["access-control-allow-origin"] == origin
        assert (
            "x-request-id" in response.headers["access-control-expose-headers"].lower()
        )

    async def test_cors_preflight_unknown_origin_refused(
        self, client: AsyncClient
    ) -> None:
        response = await client.options(
            USERS_ME,
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )

        assert "access-control-allow-origin" not in response.headers

    async def test_cors_simple_request_unknown_origin_no_header(
        self, client: AsyncClient
    ) -> None:
        response = await client.get(
            HEALTH_CHECK, headers={"Origin": "https://evil.example"}
        )

        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


class TestLogging:
    @staticmethod
    def line(record: logging.LogRecord, request_id: str | None = None) -> str:
        """`record` as the root handler writes it, under `request_id` if given."""
        (handler,) = logging.getLogger().handlers
        token = correlation_id.set(request_id) if request_id else None
        try:
            assert handler.filter(record)
        finally:
            if token:
                correlation_id.reset(token)
        return handler.format(record)

    def test_json_lines_one_line_per_record(self, restore_logging: None) -> None:
        setup_logging(json_lines=True)

        line = self.line(make_record("hello %s", "world"), "req-1")

        assert "\n" not in line
        entry = json.loads(line)
        assert entry["request_id"] == "req-1"
        assert entry["level"] == "WARNING"
        assert entry["message"] == "hello world"
        assert entry["logger"] == "app.test"
        assert entry["time"].endswith("+00:00")
        assert "exception" not in entry

    def test_json_lines_include_the_exception(self, restore_logging: None) -> None:
        setup_logging(json_lines=True)
        record = make_record("boom")
        try:
            raise ValueError("bad value\nsecond line")
        except ValueError:
            record.exc_info = sys.exc_info()

        line = self.line(record)

        assert "\n" not in line
        entry = json.loads(line)
        assert "ValueError: bad value" in entry["exception"]
        assert "Traceback" in entry["exception"]

    def test_json_lines_outside_a_request(self, restore_logging: None) -> None:
        setup_logging(json_lines=True)

        entry = json.loads(self.line(make_record()))

        assert entry["request_id"] == "-"

    def test_json_lines_leave_a_records_extras_out(self, restore_logging: None) -> None:
        """procrastinate logs each job with its arguments as `extra`."""
        setup_logging(json_lines=True)
        record = make_record("Starting job send_test_email[1]()")
        record.job = {"task_kwargs": {"email": "ada.lovelace@example.com"}}

        line = self.line(record)

        assert "ada.lovelace" not in line
        assert set(json.loads(line)) == {
            "time",
            "level",
            "logger",
            "request_id",
            "message",
        }

    def test_text_lines_contain_request_id(self, restore_logging: None) -> None:
        setup_logging(json_lines=False)

        line = self.line(make_record("text %s", "line"), "req-text")

        assert "[req-text]" in line
        assert "text line" in line
        assert "WARN" in line

    def test_json_lines_carry_the_trace_id_of_the_current_span(
        self, restore_logging: None
    ) -> None:
        setup_logging(json_lines=True, trace_ids=True)
        span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("r")

        with trace.use_span(span, end_on_exit=True):
            inside = json.loads(self.line(make_record(), "req-traced"))
        outside = json.loads(self.line(make_record(), "req-untraced"))

        assert inside["trace_id"] == format_trace_id(span.get_span_context().trace_id)
        assert inside["request_id"] == "req-traced"
        assert "trace_id" not in outside

    def test_text_lines_carry_the_trace_id_beside_the_request_id(
        self, restore_logging: None
    ) -> None:
        setup_logging(json_lines=False, trace_ids=True)
        span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("r")
        trace_id = format_trace_id(span.get_span_context().trace_id)

        with trace.use_span(span, end_on_exit=True):
            inside = self.line(make_record(), "req-traced")
        outside = self.line(make_record(), "req-untraced")

        assert f"[req-traced {trace_id}] app.test: hello" in inside
        assert "[req-untraced] app.test: hello" in outside

    @pytest.mark.parametrize("name", ["uvicorn.access", "uvicorn.error"])
    def test_setup_logging_level_governs_server_loggers(
        self, restore_logging: None, name: str
    ) -> None:
        server_logger = logging.getLogger(name)
        server_logger.setLevel(logging.INFO)  # what gunicorn's uvicorn worker does

        setup_logging(json_lines=True, level="WARNING")

        assert not server_logger.isEnabledFor(logging.INFO)
        assert server_logger.isEnabledFor(logging.WARNING)

    @pytest.mark.parametrize("json_lines", [False, True])
    def test_access_lines_hide_emails_in_paths(
        self, restore_logging: None, json_lines: bool
    ) -> None:
        setup_logging(json_lines=json_lines)
        (handler,) = logging.getLogger().handlers
        lines = []
        for path in (
            "/api/v1/password-recovery/ada.lovelace@example.com",
            "/api/v1/password-recovery-html-content/ada.lovelace%40example.com?x=1",
        ):
            # As uvicorn logs a request.
            record = logging.LogRecord(
                "uvicorn.access",
                logging.INFO,
                __file__,
                1,
                '%s - "%s %s HTTP/%s" %d',
                ("127.0.0.1:5000", "POST", path, "1.1", 200),
                None,
            )
            assert handler.filter(record)
            lines.append(handler.format(record))

        assert "ada.lovelace" not in "".join(lines)
        assert "/api/v1/password-recovery/[email] HTTP/1.1" in lines[0]
        assert "/api/v1/password-recovery-html-content/[email]?x=1" in lines[1]

    def test_setup_logging_sets_the_root_level(self, restore_logging: None) -> None:
        setup_logging(json_lines=True, level="WARNING")

        assert logging.getLogger().level == logging.WARNING


class TestValidationErrorsHideSecrets:
    """A 422 says what is wrong with a secret field, never what it was."""

    SECRET = "s3cret-\x00-" + "x" * 120

    async def test_login_password_with_a_nul_byte(self, client: AsyncClient) -> None:
        response = await client.post(
            f"{settings.API_V1_STR}/login/access-token",
            data={"username": "a@example.com", "password": self.SECRET},
        )
        assert response.status_code == 422
        assert "s3cret" not in response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "password"] and "input" not in error

    async def test_signup_password_too_long(self, client: AsyncClient) -> None:
        secret = "s3cret-" + "x" * 122
        response = await client.post(
            f"{settings.API_V1_STR}/users/signup",
            json={"email": "new@example.com", "password": secret},
        )
        assert response.status_code == 422
        assert "s3cret" not in response.text

    async def test_a_missing_field_does_not_echo_the_body(
        self, client: AsyncClient
    ) -> None:
        response = await client.post(
            f"{settings.API_V1_STR}/users/signup", json={"password": "s3cret-password"}
        )
        assert response.status_code == 422
        assert "s3cret" not in response.text
        (error,) = response.json()["detail"]
        assert error["input"] == {"password": "[redacted]"}

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/reset-password/", {"token": ["s3cret-token"], "new_password": "x"}),
            ("/login/refresh-token", {"refresh_token": {"s3cret": 1}}),
        ],
    )
    async def test_tokens_are_not_echoed(
        self, client: AsyncClient, path: str, body: dict[str, object]
    ) -> None:
        response = await client.post(f"{settings.API_V1_STR}{path}", json=body)
        assert response.status_code == 422
        assert "s3cret" not in response.text
