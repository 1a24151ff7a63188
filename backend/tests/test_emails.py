import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from app import emails
from app.core.config import settings
from tests.conftest import SmtpSink, free_port

SMTP_USER = "mailer"
# The auth tests over a plain connection deliberately let aiosmtpd accept AUTH without TLS.
plain_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
SMTP_PASSWORD = "s3cret-pass"


def configure_smtp(
    monkeypatch: pytest.MonkeyPatch,
    *,
    port: int,
    tls: bool = False,
    ssl_: bool = False,
    user: str | None = None,
    password: str | None = None,
) -> None:
    monkeypatch.setattr(settings, "SMTP_HOST", "127.0.0.1")
    monkeypatch.setattr(settings, "SMTP_PORT", port)
    monkeypatch.setattr(settings, "SMTP_TLS", tls)
    monkeypatch.setattr(settings, "SMTP_SSL", ssl_)
    monkeypatch.setattr(settings, "SMTP_USER", user)
    monkeypatch.setattr(settings, "SMTP_PASSWORD", password)
    monkeypatch.setattr(settings, "SMTP_TIMEOUT", 5.0)
    monkeypatch.setattr(settings, "EMAILS_FROM_EMAIL", "noreply@example.com")
    monkeypatch.setattr(settings, "EMAILS_FROM_NAME", "Test Sender")


def check_credentials(
    _server: Any, _session: Any, _envelope: Any, _mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok)


@pytest.fixture
def server_cert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[trustme.LeafCert]:
    """A certificate for 127.0.0.1 from a throwaway CA that the SMTP client trusts."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    yield ca.issue_cert("127.0.0.1", "localhost")


def server_ssl_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


StartController = Callable[..., SmtpSink]


@pytest.fixture
def start_controller() -> Iterator[StartController]:
    """Start an aiosmtpd server on a free loopback port; stopped after the test."""
    controllers: list[Controller] = []

    def start(**kwargs: Any) -> SmtpSink:
        sink = SmtpSink(host="127.0.0.1", port=free_port())
        controller = Controller(sink, hostname=sink.host, port=sink.port, **kwargs)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def tls_sink(
    server_cert: trustme.LeafCert, start_controller: StartController
) -> SmtpSink:
    """A server that refuses mail sent before STARTTLS."""
    return start_controller(
        tls_context=server_ssl_context(server_cert), require_starttls=True
    )


@pytest.fixture
def auth_sink(start_controller: StartController) -> SmtpSink:
    """A server that requires AUTH (SMTP_USER, SMTP_PASSWORD), without TLS."""
    return start_controller(
        authenticator=check_credentials, auth_required=True, auth_require_tls=False
    )


async def send_test_email(to: str) -> bool:
    return await emails.send_email(emails.test_email(to))


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "app.emails" and record.levelno >= logging.ERROR
    ]


def assert_not_sent(
    sent: bool, sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """send_email reports failure, nothing arrived, and one error was logged."""
    assert sent is False
    assert sink.messages == []
    assert len(error_logs(caplog)) == 1


class TestRenderEmail:
    def test_test_email_renders_html_and_text(self) -> None:
        email = emails.test_email("someone@example.com")

        assert email.to == "someone@example.com"
        assert email.subject == f"{settings.PROJECT_NAME} - Test email"
        assert settings.PROJECT_NAME in email.html
        assert settings.PROJECT_NAME in email.text
        assert "someone@example.com" in email.html
        assert "someone@example.com" in email.text
        assert email.html.lstrip().startswith("<!DOCTYPE html>")
        assert "<" not in email.text

    def test_reset_password_email_contains_link(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "FRONTEND_HOST", "https://app.example.com")

        email = emails.reset_password_email("someone@example.com", "tok.en-123")

        link = "https://app.example.com/reset-password?token=tok.en-123"
        assert link in email.html
        assert link in email.text
        assert f'href="{link}"' in email.html
        assert settings.PROJECT_NAME in email.html
        assert settings.PROJECT_NAME in email.text
        assert "someone@example.com" in email.subject
        assert str(settings.EMAIL_RESET_TOKEN_EXPIRE_HOURS) in email.text

    def test_new_account_email_renders_html_and_text(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "FRONTEND_HOST", "https://app.example.com")

        email = emails.new_account_email("new@example.com")

        assert (
            email.subject
            == f"{settings.PROJECT_NAME} - New account for new@example.com"
        )
        assert settings.PROJECT_NAME in email.html
        assert settings.PROJECT_NAME in email.text
        assert "new@example.com" in email.html
        assert "new@example.com" in email.text
        assert "https://app.example.com" in email.html
        assert "https://app.example.com" in email.text

    def test_render_email_html_escapes_user_content(self) -> None:
        email = emails.render_email(
            to="someone@example.com",
            subject="s",
            template="test_email",
            context={"email": "<script>alert(1)</script>"},
        )

        assert "&lt;script&gt;" in email.html
        assert "<script>" not in email.html
        assert "<script>alert(1)</script>" in email.text


class TestSendEmail:
    async def test_send_email_not_configured_returns_false(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.INFO, logger="app.emails"):
            sent = await emails.send_email(emails.test_email("someone@example.com"))

        assert sent is False
        assert any(
            record.name == "app.emails" and "not configured" in record.getMessage()
            for record in caplog.records
        )

    async def test_send_email_no_from_address_returns_false(
        self, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "EMAILS_FROM_EMAIL", None)

        sent = await emails.send_email(emails.test_email("someone@example.com"))

        assert sent is False
        assert smtp_server.messages == []

    async def test_send_email_plain_smtp_delivers(
        self, smtp_server: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "EMAILS_FROM_NAME", "Test Sender")
        email = emails.reset_password_email("someone@example.com", "the-token")

        sent = await emails.send_email(email)

        assert sent is True
        assert smtp_server.recipients == [["someone@example.com"]]
        (message,) = smtp_server.messages
        (sender,) = message["From"].addresses
        assert sender.display_name == "Test Sender"
        assert sender.addr_spec == "noreply@example.com"
        assert message["To"] == "someone@example.com"
        assert message["Subject"] == email.subject
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        assert text is not None
        assert html is not None
        assert text.get_content_type() == "text/plain"
        assert html.get_content_type() == "text/html"
        assert "reset-password?token=the-token" in text.get_content()
        assert "reset-password?token=the-token" in html.get_content()

    async def test_send_email_starttls_delivers(
        self, tls_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        configure_smtp(monkeypatch, port=tls_sink.port, tls=True)

        sent = await send_test_email("tls@example.com")

        assert sent is True
        assert tls_sink.recipients == [["tls@example.com"]]

    async def test_send_email_starttls_required_but_disabled_returns_false(
        self,
        tls_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        configure_smtp(monkeypatch, port=tls_sink.port, tls=False)

        sent = await send_test_email("tls@example.com")

        assert_not_sent(sent, tls_sink, caplog)

    async def test_send_email_starttls_untrusted_cert_returns_false(
        self,
        start_controller: StartController,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        untrusted = trustme.CA().issue_cert("127.0.0.1")
        trusted_ca_file = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(trusted_ca_file))
        monkeypatch.setenv("SSL_CERT_FILE", str(trusted_ca_file))
        sink = start_controller(tls_context=server_ssl_context(untrusted))
        configure_smtp(monkeypatch, port=sink.port, tls=True)

        sent = await send_test_email("tls@example.com")

        assert_not_sent(sent, sink, caplog)

    async def test_send_email_implicit_ssl_delivers(
        self,
        server_cert: trustme.LeafCert,
        start_controller: StartController,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        sink = start_controller(ssl_context=server_ssl_context(server_cert))
        # SMTP_TLS stays on, as in a typical .env: SMTP_SSL must win over it.
        configure_smtp(monkeypatch, port=sink.port, tls=True, ssl_=True)

        sent = await send_test_email("ssl@example.com")

        assert sent is True
        assert sink.recipients == [["ssl@example.com"]]

    @plain_auth
    async def test_send_email_auth_right_credentials_delivers(
        self, auth_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        configure_smtp(
            monkeypatch, port=auth_sink.port, user=SMTP_USER, password=SMTP_PASSWORD
        )

        sent = await send_test_email("auth@example.com")

        assert sent is True
        assert auth_sink.recipients == [["auth@example.com"]]

    @plain_auth
    async def test_send_email_auth_wrong_credentials_returns_false(
        self,
        auth_sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        configure_smtp(
            monkeypatch, port=auth_sink.port, user=SMTP_USER, password="wrong-pass"
        )

        sent = await send_test_email("auth@example.com")

        assert_not_sent(sent, auth_sink, caplog)
        assert "wrong-pass" not in caplog.text

    async def test_send_email_auth_over_starttls_delivers(
        self,
        server_cert: trustme.LeafCert,
        start_controller: StartController,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        sink = start_controller(
            tls_context=server_ssl_context(server_cert),
            require_starttls=True,
            authenticator=check_credentials,
            auth_required=True,
        )
        configure_smtp(
            monkeypatch,
            port=sink.port,
            tls=True,
            user=SMTP_USER,
            password=SMTP_PASSWORD,
        )

        sent = await send_test_email("auth@example.com")

        assert sent is True
        assert sink.recipients == [["auth@example.com"]]

    async def test_send_email_server_down_returns_false(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        configure_smtp(monkeypatch, port=free_port())

        sent = await send_test_email("down@example.com")

        assert sent is False
        (logged,) = error_logs(caplog)
        assert "not sent" in logged
