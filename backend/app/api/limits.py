"""The rate-limit flows routes inject: password checks, requests that send an
email, sign-ups (the limiter and its rules: app/core/ratelimit.py)."""

from typing import Annotated

from fastapi import Depends

from app import crud, jobs
from app.api.deps import ClientAddress, SessionDep
from app.core import ratelimit


async def get_rate_limiter(session: SessionDep) -> ratelimit.RateLimiter:
    return ratelimit.rate_limiter_for(session)


RateLimiterDep = Annotated[ratelimit.RateLimiter, Depends(get_rate_limiter)]


class PasswordAttempts:
    """Password checks (login, password change). Each check counts as a failure
    before the password is hashed, so neither a blocked client nor a burst of
    parallel guesses gets more checks than the limits; a correct password takes
    its counts back.

    Lockout an attacker cannot aim: failures block the failing address for that
    account, not the account. Only when the account fails from everywhere
    together (many addresses) are unknown addresses refused too; an address that
    signed in to the account before still gets through. The owner is emailed
    once per window while their account refuses logins."""

    def __init__(
        self,
        session: SessionDep,
        limiter: RateLimiterDep,
        client_address: ClientAddress,
    ) -> None:
        self.session = session
        self.limiter = limiter
        self.client_address = client_address

    async def start(self, email: str) -> list[ratelimit.Counted]:
        account = email.lower()
        per_account_client, per_account, per_client = ratelimit.login_limits(
            account, self.client_address
        )
        try:
            counted = await ratelimit.attempt_all(
                self.limiter, [per_account_client, per_client]
            )
        except ratelimit.TooManyAttempts as refused:
            if refused.rule == per_account_client[0]:
                await self._owner_alert(account)
            raise
        try:
            counted += await ratelimit.attempt_all(self.limiter, [per_account])
        except ratelimit.TooManyAttempts:
            if not await crud.has_signed_in_from(
                session=self.session, email=account, client_address=self.client_address
            ):
                await ratelimit.forgive_all(self.limiter, counted)
                await self._owner_alert(account)
                raise
        return counted

    async def succeeded(self, counted: list[ratelimit.Counted]) -> None:
        this_address_for_account, *others = counted
        await self.limiter.reset(
            this_address_for_account.rule, this_address_for_account.key
        )
        await ratelimit.forgive_all(self.limiter, others)

    async def _owner_alert(self, account: str) -> None:
        """Email the owner of `account` (a job: it looks the account up), unless
        sent in this window already."""
        try:
            await self.limiter.attempt(ratelimit.login_alert_rule(), account)
        except ratelimit.TooManyAttempts:
            return
        await jobs.send_soon(self.session, jobs.send_login_alert, email=account)


PasswordAttemptsDep = Annotated[PasswordAttempts, Depends()]


class EmailRequests:
    """Requests that send an email (recovery, verification, email change), limited
    per target address (a cooldown per kind of email, an hourly cap), per target
    address from one client (so that no client can use up another's), and per
    client, whether or not the address is registered."""

    def __init__(self, limiter: RateLimiterDep, client_address: ClientAddress) -> None:
        self.limiter = limiter
        self.client_address = client_address

    async def count(self, purpose: ratelimit.EmailPurpose, recipient: str) -> None:
        """Count one request for an email of kind `purpose` (429 beyond the limits)."""
        limits = ratelimit.email_request_limits(
            purpose, recipient.lower(), self.client_address
        )
        await ratelimit.attempt_all(self.limiter, limits)


EmailRequestsDep = Annotated[EmailRequests, Depends()]


async def count_signup(limiter: RateLimiterDep, client_address: ClientAddress) -> None:
    """Sign-ups per client address (429 beyond the limit), counted before the
    password is hashed: a script cannot burn CPU or mail strangers without limit."""
    await ratelimit.attempt_all(limiter, [ratelimit.signup_limit(client_address)])
