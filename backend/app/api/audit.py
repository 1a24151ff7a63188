"""The audit trail as routes inject it: `Audit` records a request's security
events with where it came from (client address, user agent, request id)."""

from typing import Annotated, Literal

from asgi_correlation_id import correlation_id
from fastapi import Depends, Request

from app import crud
from app.api.deps import ClientAddress, SessionDep
from app.models import (
    AuditAction,
    AuditContext,
    AuditEvent,
    LoginFailure,
    User,
    UserUpdate,
    UserUpdateMe,
)

LoginMethod = Literal["password", "supabase"]


class Audit:
    """Adds events to the request's session: they are committed with the change
    they record (call it before the crud function that commits), never without."""

    def __init__(
        self, request: Request, session: SessionDep, client_address: ClientAddress
    ) -> None:
        self.session = session
        user_agent = request.headers.get("user-agent")
        self.context = AuditContext(
            client_address=client_address[:64],
            user_agent=user_agent[:255] if user_agent else None,
            request_id=correlation_id.get(),
        )

    def event(
        self,
        action: AuditAction,
        *,
        actor: User | None,
        target: User | None,
        **details: str | bool | None,
    ) -> AuditEvent:
        return AuditEvent.about(
            target,
            action,
            context=self.context,
            actor_id=actor.id if actor else None,
            details=details,
        )

    def record(
        self,
        action: AuditAction,
        *,
        actor: User | None,
        target: User | None,
        **details: str | bool | None,
    ) -> None:
        event = self.event(action, actor=actor, target=target, **details)
        crud.add_audit_event(session=self.session, event=event)

    async def login_failed(
        self,
        reason: LoginFailure | None,
        *,
        email: str | None = None,
        user: User | None = None,
        method: LoginMethod = "password",
    ) -> None:
        """Record a failed login at once, in a transaction of its own. Without a
        `reason`, the password check failed: for an unknown user or a wrong
        password, as the account of `email` tells."""
        if user is None and email is not None:
            user = await crud.get_user_by_email(session=self.session, email=email)
        if reason is None:
            reason = LoginFailure.wrong_password if user else LoginFailure.unknown_user
        # Without an account to point at, the email tried.
        tried = {"email": email} if user is None and email is not None else {}
        event = self.event(
            AuditAction.login_failed,
            actor=None,
            target=user,
            reason=reason,
            method=method,
            **tried,
        )
        await crud.save_audit_event(session=self.session, event=event)

    def user_updated(
        self, *, actor: User, user: User, user_in: UserUpdate | UserUpdateMe
    ) -> None:
        """The events of an update of `user` (before it is applied): email,
        password, role, activation."""
        fields = user_in.model_fields_set
        if "email" in fields and user_in.email.lower() != user.email.lower():
            self.record(
                AuditAction.email_changed,
                actor=actor,
                target=user,
                old_email=user.email,
                new_email=user_in.email,
            )
        if not isinstance(user_in, UserUpdate):
            return
        if "password" in fields:
            self.record(AuditAction.password_changed, actor=actor, target=user)
        role = user_in.requested_role(user.role)
        if role != user.role:
            self.record(
                AuditAction.role_changed,
                actor=actor,
                target=user,
                old_role=user.role,
                new_role=role,
            )
        if "is_active" in fields and user_in.is_active != user.is_active:
            action = (
                AuditAction.user_activated
                if user_in.is_active
                else AuditAction.user_deactivated
            )
            self.record(action, actor=actor, target=user)


AuditDep = Annotated[Audit, Depends()]
