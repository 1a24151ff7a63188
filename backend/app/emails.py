"""Transactional email: Jinja2 templates (HTML + text) delivered over SMTP."""

import logging
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, select_autoescape
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from app.core.config import settings

logger = logging.getLogger(__name__)

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "email_templates"),
    autoescape=select_autoescape(["html"]),
)

# Longest wait between two attempts; waits double from EMAIL_RETRY_WAIT_SECONDS.
MAX_RETRY_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Email:
    to: str
    subject: str
    html: str
    text: str


def render_email(
    *, to: str, subject: str, template: str, context: dict[str, Any]
) -> Email:
    context = {"project_name": settings.PROJECT_NAME, **context}
    return Email(
        to=to,
        subject=subject,
        html=templates.get_template(f"{template}.html").render(context),
        text=templates.get_template(f"{template}.txt").render(context),
    )


def _frontend_link(path: str, *, token: str | None = None) -> str:
    link = f"{settings.FRONTEND_HOST.rstrip('/')}/{path}"
    if token is None:
        return link
    # JWTs are URL-safe already; quoting keeps any other token from breaking the link.
    return f"{link}?token={quote(token, safe='')}"


def _hours(count: int) -> str:
    return "1 hour" if count == 1 else f"{count} hours"


def test_email(to: str) -> Email:
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Test email",
        template="test_email",
        context={"email": to},
    )


def _link_email(
    to: str, *, subject: str, template: str, link: str, valid_hours: int
) -> Email:
    """An email whose point is a link that works for `valid_hours`."""
    context = {"email": to, "link": link, "valid_for": _hours(valid_hours)}
    return render_email(to=to, subject=subject, template=template, context=context)


def reset_password_email(to: str, token: str) -> Email:
    return _link_email(
        to,
        subject=f"{settings.PROJECT_NAME} - Password recovery for {to}",
        template="reset_password",
        link=_frontend_link("reset-password", token=token),
        valid_hours=settings.EMAIL_RESET_TOKEN_EXPIRE_HOURS,
    )


def verify_email_email(to: str, token: str) -> Email:
    return _link_email(
        to,
        subject=f"{settings.PROJECT_NAME} - Verify your email",
        template="verify_email",
        link=_frontend_link("verify-email", token=token),
        valid_hours=settings.EMAIL_VERIFY_TOKEN_EXPIRE_HOURS,
    )


def new_account_email(to: str, verification_token: str | None = None) -> Email:
    verify_link = (
        None
        if verification_token is None
        else _frontend_link("verify-email", token=verification_token)
    )
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - New account for {to}",
        template="new_account",
        context={
            "email": to,
            "link": settings.FRONTEND_HOST,
            "verify_link": verify_link,
            "verify_valid_for": _hours(settings.EMAIL_VERIFY_TOKEN_EXPIRE_HOURS),
        },
    )


def password_changed_email(to: str) -> Email:
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Your password was changed",
        template="password_changed",
        context={"email": to, "link": _frontend_link("recover-password")},
    )


def login_attempts_email(to: str) -> Email:
    """The owner's warning while logins to their account are being refused."""
    minutes = settings.LOGIN_FAILURE_WINDOW_SECONDS // 60
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Failed sign-in attempts on your account",
        template="login_attempts",
        context={
            "email": to,
            "link": _frontend_link("recover-password"),
            "window": "1 minute" if minutes <= 1 else f"{minutes} minutes",
        },
    )


def email_changed_email(to: str, new_email: str) -> Email:
    """The notice sent to the old address `to`; the account now uses `new_email`."""
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Your email address was changed",
        template="email_changed",
        context={"email": to, "new_email": new_email},
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a failed send may succeed if tried again later.

    4xx replies (greylisting, a full queue, a 421 shutdown) and lost or refused
    connections are transient. 5xx replies (unknown mailbox, 535 bad credentials), TLS
    failures (untrusted certificate) and missing server features are not: retrying
    cannot fix them.
    """
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return 400 <= exc.code < 500
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return bool(exc.recipients) and all(map(is_transient, exc.recipients))
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return False
        cause = cause.__cause__
    # Refused, reset or lost connections (ConnectionError) and timeouts (TimeoutError,
    # which asyncio.TimeoutError is): aiosmtplib's connect, disconnect and timeout
    # errors derive from them.
    return isinstance(exc, OSError)


def _describe(exc: BaseException, email: Email) -> str:
    """The error for a log line: type and server reply, with the recipient masked.

    Server replies often quote the address ("<a@b.c>: Recipient address rejected").
    """
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        detail = f"{exc.code} {exc.message}"
    elif isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        detail = "; ".join(f"{err.code} {err.message}" for err in exc.recipients)
    else:
        detail = str(exc)
    return f"{type(exc).__name__}: {detail}".replace(email.to, _masked(email.to))


def _masked(address: str) -> str:
    return f"*@{address.rpartition('@')[2]}"


def _log_subject(email: Email) -> str:
    # Some subjects name the recipient: logs keep only its domain.
    return email.subject.replace(email.to, _masked(email.to))


def _build_message(email: Email, message_id: str | None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = formataddr(
        (settings.EMAILS_FROM_NAME or "", str(settings.EMAILS_FROM_EMAIL))
    )
    message["To"] = email.to
    message["Subject"] = email.subject
    if message_id is not None:
        message["Message-ID"] = message_id
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message


class EmailNotSent(Exception):
    """The last attempt failed: `transient` tells whether a later try may succeed."""

    def __init__(self, description: str, *, transient: bool, attempts: int) -> None:
        super().__init__(description)
        self.transient = transient
        self.attempts = attempts


async def deliver(email: Email, *, message_id: str | None = None) -> bool:
    """Deliver one email, retrying transient failures EMAIL_SEND_ATTEMPTS times;
    False when email is not configured. Raises EmailNotSent when the server
    refused it or could not be reached. Logs name the subject and the
    recipient's domain, never the body or links."""
    if not settings.emails_enabled:
        logger.info("Email not configured (SMTP_HOST, EMAILS_FROM_EMAIL): not sent")
        return False
    message = _build_message(email, message_id)
    max_attempts = settings.EMAIL_SEND_ATTEMPTS
    subject, recipient = _log_subject(email), _masked(email.to)

    def log_retry(state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        exc = state.outcome.exception()
        assert exc is not None
        logger.warning(
            "Email %r to %s not sent on attempt %d of %d, retrying in %.3g s: %s",
            subject,
            recipient,
            state.attempt_number,
            max_attempts,
            state.next_action.sleep,
            _describe(exc, email),
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential(
            multiplier=settings.EMAIL_RETRY_WAIT_SECONDS, max=MAX_RETRY_WAIT_SECONDS
        ),
        retry=retry_if_exception(is_transient),
        before_sleep=log_retry,
        reraise=True,
    )
    attempts = 0
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                await aiosmtplib.send(
                    message,
                    hostname=settings.SMTP_HOST,
                    port=settings.SMTP_PORT,
                    username=settings.SMTP_USER,
                    password=settings.SMTP_PASSWORD,
                    use_tls=settings.SMTP_SSL,
                    start_tls=settings.SMTP_TLS and not settings.SMTP_SSL,
                    timeout=settings.SMTP_TIMEOUT,
                )
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise EmailNotSent(
            _describe(exc, email), transient=is_transient(exc), attempts=attempts
        ) from exc
    logger.info("Email %r to %s sent on attempt %d", subject, recipient, attempts)
    return True


async def send_email(email: Email, *, message_id: str | None = None) -> bool:
    """Deliver one email (see `deliver`); failures are logged, never raised."""
    bug: Exception | None = None
    try:
        return await deliver(email, message_id=message_id)
    except EmailNotSent as exc:
        failure = "transient failure" if exc.transient else "permanent failure"
        attempts, description = exc.attempts, str(exc)
    except Exception as exc:
        # Anything but an SMTP or network error is a bug: keep its traceback.
        failure, attempts, bug = "permanent failure", 1, exc
        description = _describe(exc, email)
    logger.error(
        "Email %r to %s not sent (%s after %d of %d attempts): %s",
        _log_subject(email),
        _masked(email.to),
        failure,
        attempts,
        settings.EMAIL_SEND_ATTEMPTS,
        description,
        exc_info=bug,
    )
    return False
