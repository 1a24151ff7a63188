import logging
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from asgi_correlation_id import CorrelationIdFilter, correlation_id

from app import emails
from app.core.config import settings
from tests.utils.servers import free_port
from tests.utils.smtp import SmtpSink

SMTP_USER = "mailer"
# The auth tests over a plain connection deliberately let aiosmtpd accept AUTH without TLS.
plain_auth = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
SMTP_PASSWORD = "s3cret-pass"
FRONTEND = "https://app.example.com"


@pytest.fixture(autouse=True)
def _fast_email(monkeypatch: pytest.MonkeyPatch) -> None:
    """No waits between send attempts, the default attempt count, a known frontend."""
    monkeypatch.setattr(settings, "EMAIL_RETRY_WAIT_SECONDS", 0.0)
    monkeypatch.setattr(settings, "EMAIL_SEND_ATTEMPTS", 3)
    monkeypatch.setattr(settings, "FRONTEND_HOST", FRONTEND)


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
    # handled=False: aiosmtpd itself answers a failure with 535 (the default, True,
    # means the authenticator already replied, so the client would wait for a timeout).
    return AuthResult(success=ok, handled=False)


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


def logs(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "app.emails" and record.levelno == level
    ]


def error_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return logs(caplog, logging.ERROR)


def warning_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return logs(caplog, logging.WARNING)


def assert_not_sent(
    sent: bool, sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    """send_email reports a permanent failure: nothing arrived, no retry, one error."""
    assert sent is False
    assert sink.messages == []
    assert warning_logs(caplog) == []
    (logged,) = error_logs(caplog)
    assert "permanent failure after 1 of 3 attempts" in logged


def message_parts(message: Any) -> tuple[str, str]:
    """The text and HTML bodies of a received message."""
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    return text.get_content(), html.get_content()


@dataclass
class FlakySink(SmtpSink):
    """Answers `reply` to the first `failures` RCPT or DATA commands (`stage`), then
    accepts. `attempts` counts the commands of that stage, one per send attempt."""

    stage: str = "DATA"
    reply: str = "451 4.3.0 Try again later"
    failures: int = 0
    attempts: int = 0

    def _fail(self, stage: str) -> bool:
        if stage != self.stage:
            return False
        self.attempts += 1
        return self.attempts <= self.failures

    async def handle_RCPT(
        self,
        _server: Any,
        _session: Any,
        envelope: Any,
        address: str,
        _rcpt_options: list[str],
    ) -> str:
        if self._fail("RCPT"):
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self._fail("DATA"):
            return self.reply
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def start_flaky() -> Iterator[Callable[..., FlakySink]]:
    controllers: list[Controller] = []

    def start(**kwargs: Any) -> FlakySink:
        sink = FlakySink(host="127.0.0.1", port=free_port(), **kwargs)
        controller = Controller(sink, hostname=sink.host, port=sink.port)
        controller.start()
        controllers.append(controller)
        return sink

    yield start
    for controller in controllers:
        controller.stop()


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

    def test_reset_password_email_contains_link(self) -> None:
        email = emails.reset_password_email("someone@example.com", "tok.en-123")

        link = "https://app.example.com/reset-password?token=tok.en-123"
        assert link in email.html
        assert link in email.text
        assert f'href="{link}"' in email.html
        assert settings.PROJECT_NAME in email.html
        assert settings.PROJECT_NAME in email.text
        assert "someone@example.com" in email.subject

    @pytest.mark.parametrize(
        ("valid_hours", "wording"),
        [(1, "valid for 1 hour "), (48, "valid for 48 hours")],
    )
    def test_reset_password_email_states_validity(
        self, monkeypatch: pytest.MonkeyPatch, valid_hours: int, wording: str
    ) -> None:
        monkeypatch.setattr(settings, "EMAIL_RESET_TOKEN_EXPIRE_HOURS", valid_hours)

        email = emails.reset_password_email("someone@example.com", "t")

        assert wording in email.text
        assert wording in email.html

    def test_verify_email_email_contains_link_and_validity(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "EMAIL_VERIFY_TOKEN_EXPIRE_HOURS", 48)

        email = emails.verify_email_email("someone@example.com", "tok.en-123")

        link = "https://app.example.com/verify-email?token=tok.en-123"
        assert email.subject == f"{settings.PROJECT_NAME} - Verify your email"
        assert link in email.text
        assert f'href="{link}"' in email.html
        assert "valid for 48 hours" in email.text
        assert "valid for 48 hours" in email.html

    def test_link_token_is_url_encoded(self) -> None:
        email = emails.verify_email_email("someone@example.com", 'a b/c+d&e="<')

        link = "https://app.example.com/verify-email?token=a%20b%2Fc%2Bd%26e%3D%22%3C"
        assert link in email.text
        assert f'href="{link}"' in email.html

    def test_link_frontend_host_trailing_slash_is_dropped(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(settings, "FRONTEND_HOST", "https://app.example.com/")

        email = emails.reset_password_email("someone@example.com", "t")

        assert "https://app.example.com/reset-password?token=t" in email.text

    def test_new_account_email_with_token_contains_verify_link(self) -> None:
        email = emails.new_account_email("new@example.com", verification_token="v.t-1")

        link = "https://app.example.com/verify-email?token=v.t-1"
        assert link in email.text
        assert f'href="{link}"' in email.html

    def test_new_account_email_without_token_has_no_verify_link(self) -> None:
        email = emails.new_account_email("new@example.com")

        assert "verify-email" not in email.text
        assert "verify-email" not in email.html

    def test_password_changed_email_links_to_recovery(self) -> None:
        email = emails.password_changed_email("someone@example.com")

        link = "https://app.example.com/recover-password"
        assert email.subject == f"{settings.PROJECT_NAME} - Your password was changed"
        assert link in email.text
        assert f'href="{link}"' in email.html
        for body in (email.text, email.html):
            assert "other sessions were signed out" in body
            assert "wasn't you" in body or "wasn&#39;t you" in body

    def test_email_changed_email_names_new_address_escaped(self) -> None:
        email = emails.email_changed_email("old@example.com", "<b>new</b>@example.com")

        assert email.to == "old@example.com"
        assert (
            email.subject == f"{settings.PROJECT_NAME} - Your email address was changed"
        )
        assert "&lt;b&gt;new&lt;/b&gt;@example.com" in email.html
        assert "<b>" not in email.html
        assert "<b>new</b>@example.com" in email.text
        assert "contact support" in email.text
        assert "contact support" in email.html

    def test_new_account_email_renders_html_and_text(self) -> None:
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
        assert "SMTPAuthenticationError: 535" in error_logs(caplog)[0]
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


def build_verify(to: str) -> emails.Email:
    return emails.verify_email_email(to, "verify.tok-en")


def build_new_account(to: str) -> emails.Email:
    return emails.new_account_email(to, verification_token="verify.tok-en")


def build_reset(to: str) -> emails.Email:
    return emails.reset_password_email(to, "reset.tok-en")


def build_password_changed(to: str) -> emails.Email:
    return emails.password_changed_email(to)


class TestSendBuiltEmails:
    @pytest.mark.parametrize(
        ("build", "subject", "link"),
        [
            (
                build_verify,
                "Verify your email",
                f"{FRONTEND}/verify-email?token=verify.tok-en",
            ),
            (
                build_new_account,
                "New account for user@example.com",
                f"{FRONTEND}/verify-email?token=verify.tok-en",
            ),
            (
                build_reset,
                "Password recovery for user@example.com",
                f"{FRONTEND}/reset-password?token=reset.tok-en",
            ),
            (
                build_password_changed,
                "Your password was changed",
                f"{FRONTEND}/recover-password",
            ),
        ],
    )
    async def test_send_email_delivers_link_in_both_parts(
        self,
        smtp_server: SmtpSink,
        build: Callable[[str], emails.Email],
        subject: str,
        link: str,
    ) -> None:
        sent = await emails.send_email(build("user@example.com"))

        assert sent is True
        assert smtp_server.recipients == [["user@example.com"]]
        (message,) = smtp_server.messages
        assert message["To"] == "user@example.com"
        assert message["Subject"] == f"{settings.PROJECT_NAME} - {subject}"
        text, html = message_parts(message)
        assert link in text
        assert f'href="{link}"' in html

    async def test_send_email_changed_notice_goes_to_old_address(
        self, smtp_server: SmtpSink
    ) -> None:
        email = emails.email_changed_email("old@example.com", "new@example.org")

        sent = await emails.send_email(email)

        assert sent is True
        assert smtp_server.recipients == [["old@example.com"]]
        (message,) = smtp_server.messages
        assert (
            message["Subject"]
            == f"{settings.PROJECT_NAME} - Your email address was changed"
        )
        text, html = message_parts(message)
        for body in (text, html):
            assert "new@example.org" in body
            assert "contact support" in body


StartFlaky = Callable[..., FlakySink]


class TestSendEmailRetries:
    @pytest.mark.parametrize("stage", ["RCPT", "DATA"])
    async def test_send_email_transient_reply_retried_then_delivered(
        self,
        start_flaky: StartFlaky,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        stage: str,
    ) -> None:
        sink = start_flaky(stage=stage, failures=2)
        configure_smtp(monkeypatch, port=sink.port)

        with caplog.at_level(logging.INFO, logger="app.emails"):
            sent = await send_test_email("retry@example.com")

        assert sent is True
        assert sink.attempts == 3
        assert sink.recipients == [["retry@example.com"]]
        warnings = warning_logs(caplog)
        assert len(warnings) == 2
        for number, warning in enumerate(warnings, start=1):
            assert f"on attempt {number} of 3" in warning
            assert "451 4.3.0 Try again later" in warning
        assert error_logs(caplog) == []
        (info,) = logs(caplog, logging.INFO)
        assert "sent on attempt 3" in info

    @pytest.mark.parametrize("stage", ["RCPT", "DATA"])
    async def test_send_email_transient_reply_gives_up_after_attempts(
        self,
        start_flaky: StartFlaky,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        stage: str,
    ) -> None:
        sink = start_flaky(stage=stage, failures=100)
        configure_smtp(monkeypatch, port=sink.port)
        monkeypatch.setattr(settings, "EMAIL_SEND_ATTEMPTS", 4)

        sent = await send_test_email("retry@example.com")

        assert sent is False
        assert sink.attempts == 4
        assert sink.messages == []
        assert len(warning_logs(caplog)) == 3
        (logged,) = error_logs(caplog)
        assert "transient failure after 4 of 4 attempts" in logged

    @pytest.mark.parametrize("stage", ["RCPT", "DATA"])
    async def test_send_email_permanent_reply_not_retried(
        self,
        start_flaky: StartFlaky,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        stage: str,
    ) -> None:
        sink = start_flaky(stage=stage, failures=100, reply="550 5.7.1 Rejected")
        configure_smtp(monkeypatch, port=sink.port)

        sent = await send_test_email("rejected@example.com")

        assert sink.attempts == 1
        assert_not_sent(sent, sink, caplog)
        assert "550 5.7.1 Rejected" in error_logs(caplog)[0]

    async def test_send_email_single_attempt_setting_does_not_retry(
        self,
        start_flaky: StartFlaky,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        sink = start_flaky(failures=1)
        configure_smtp(monkeypatch, port=sink.port)
        monkeypatch.setattr(settings, "EMAIL_SEND_ATTEMPTS", 1)

        sent = await send_test_email("once@example.com")

        assert sent is False
        assert sink.attempts == 1
        assert warning_logs(caplog) == []
        (logged,) = error_logs(caplog)
        assert "transient failure after 1 of 1 attempts" in logged

    async def test_send_email_bug_is_logged_with_its_traceback(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        configure_smtp(monkeypatch, port=free_port())

        async def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("bug for bug@example.com")

        monkeypatch.setattr(aiosmtplib, "send", broken)

        assert await send_test_email("bug@example.com") is False
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert record.exc_info is not None and record.exc_info[0] is RuntimeError
        assert "RuntimeError: bug for *@example.com" in record.getMessage()

    async def test_send_email_connection_refused_retried_then_gives_up(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        configure_smtp(monkeypatch, port=free_port())

        sent = await send_test_email("down@example.com")

        assert sent is False
        first, second = warning_logs(caplog)
        assert "on attempt 1 of 3" in first
        assert "on attempt 2 of 3" in second
        assert "SMTPConnectError" in first
        assert "SMTPConnectError" in second
        (logged,) = error_logs(caplog)
        assert "transient failure after 3 of 3 attempts" in logged

    async def test_send_email_backoff_doubles_up_to_cap(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        configure_smtp(monkeypatch, port=free_port())
        monkeypatch.setattr(settings, "EMAIL_SEND_ATTEMPTS", 5)
        monkeypatch.setattr(settings, "EMAIL_RETRY_WAIT_SECONDS", 0.01)
        monkeypatch.setattr(emails, "MAX_RETRY_WAIT_SECONDS", 0.03)

        sent = await send_test_email("down@example.com")

        assert sent is False
        waits = [
            w.split("retrying in ")[1].split(" s:")[0] for w in warning_logs(caplog)
        ]
        assert waits == ["0.01", "0.02", "0.03", "0.03"]

    async def test_send_email_failure_logs_carry_request_id_without_secrets(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        configure_smtp(monkeypatch, port=free_port())
        email = emails.reset_password_email("victim@example.com", "secret.tok-en")
        request_filter = CorrelationIdFilter()
        caplog.handler.addFilter(request_filter)
        token = correlation_id.set("req-1234")
        try:
            sent = await emails.send_email(email)
        finally:
            correlation_id.reset(token)
            caplog.handler.removeFilter(request_filter)

        assert sent is False
        records = [r for r in caplog.records if r.name == "app.emails"]
        assert len(records) == 3
        assert [getattr(r, "correlation_id", None) for r in records] == ["req-1234"] * 3
        for record in records:
            logged = record.getMessage()
            assert "secret.tok-en" not in logged
            assert "reset-password" not in logged
            assert "victim" not in logged
            assert "*@example.com" in logged


class TestIsTransient:
    @pytest.mark.parametrize(
        "exc",
        [
            ConnectionRefusedError(111, "Connection refused"),
            ConnectionResetError(104, "Connection reset by peer"),
            TimeoutError(),
            aiosmtplib.SMTPConnectError("Error connecting"),
            aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"),
            aiosmtplib.SMTPServerDisconnected("Connection lost"),
            aiosmtplib.SMTPReadTimeoutError("Timed out reading"),
            aiosmtplib.SMTPConnectResponseError(421, "Service not available"),
            aiosmtplib.SMTPDataError(452, "Insufficient storage"),
            aiosmtplib.SMTPAuthenticationError(454, "Temporary auth failure"),
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(450, "Greylisted", "a@b.c")]
            ),
        ],
        ids=type,
    )
    def test_is_transient_true(self, exc: Exception) -> None:
        assert emails.is_transient(exc) is True

    @pytest.mark.parametrize(
        "exc",
        [
            aiosmtplib.SMTPAuthenticationError(535, "Authentication failed"),
            aiosmtplib.SMTPConnectResponseError(554, "No SMTP service here"),
            aiosmtplib.SMTPSenderRefused(530, "Must issue STARTTLS", "x@y.z"),
            aiosmtplib.SMTPDataError(550, "Rejected"),
            aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line"),
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(450, "Greylisted", "a@b.c"),
                    aiosmtplib.SMTPRecipientRefused(550, "No such user", "d@b.c"),
                ]
            ),
            aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"),
            aiosmtplib.SMTPException("SMTP STARTTLS extension not supported"),
            ssl.SSLCertVerificationError("certificate verify failed"),
            ValueError("not an SMTP error"),
        ],
        ids=type,
    )
    def test_is_transient_false(self, exc: Exception) -> None:
        assert emails.is_transient(exc) is False

    def test_is_transient_connect_error_caused_by_tls_is_permanent(self) -> None:
        exc = aiosmtplib.SMTPConnectError("Error connecting")
        exc.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")

        assert emails.is_transient(exc) is False
