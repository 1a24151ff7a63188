"""Transactional email: Jinja2 templates (HTML + text) delivered over SMTP."""

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr
from pathlib import Path
from typing import Any

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, select_autoescape

from app.core.config import settings

logger = logging.getLogger(__name__)

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "email_templates"),
    autoescape=select_autoescape(["html"]),
)


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


def test_email(to: str) -> Email:
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Test email",
        template="test_email",
        context={"email": to},
    )


def reset_password_email(to: str, token: str) -> Email:
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - Password recovery for {to}",
        template="reset_password",
        context={
            "email": to,
            "link": f"{settings.FRONTEND_HOST}/reset-password?token={token}",
            "valid_hours": settings.EMAIL_RESET_TOKEN_EXPIRE_HOURS,
        },
    )


def new_account_email(to: str) -> Email:
    return render_email(
        to=to,
        subject=f"{settings.PROJECT_NAME} - New account for {to}",
        template="new_account",
        context={"email": to, "link": settings.FRONTEND_HOST},
    )


async def send_email(email: Email) -> bool:
    """Deliver one email; failures are logged, never raised (it runs after the response)."""
    if not settings.emails_enabled:
        logger.info("Email not configured (SMTP_HOST, EMAILS_FROM_EMAIL): not sent")
        return False
    message = EmailMessage()
    message["From"] = formataddr(
        (settings.EMAILS_FROM_NAME or "", str(settings.EMAILS_FROM_EMAIL))
    )
    message["To"] = email.to
    message["Subject"] = email.subject
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    try:
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
        logger.error(
            "Email %r not sent: %s: %s", email.subject, type(exc).__name__, exc
        )
        return False
    logger.info("Email %r sent", email.subject)
    return True
