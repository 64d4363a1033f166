"""The governance state a running server holds: trust, the verified constitution, the policy
evaluators, the rate limiter and the token-verification key cache."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from somastack.config import Settings
from somastack.errors import ConstitutionInvalid
from somastack.governance import constitution, ratelimit, signing
from somastack.governance.bootstrap import Announce, bootstrap, to_stderr
from somastack.governance.rego_worker import RegoPool
from somastack.store import Database

log = logging.getLogger("somastack.governance")


@dataclass
class Governance:
    settings: Settings
    trust: constitution.Trust
    constitution: constitution.Active
    rego: RegoPool
    limiter: ratelimit.RateLimiter
    jwt_keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)
    failure: str | None = None  # set when a re-check finds the constitution invalid: fail closed

    @property
    def default_limit(self) -> ratelimit.Limit:
        return ratelimit.Limit(self.settings.rate_limit, self.settings.rate_window_s)

    async def recheck(self, db: Database) -> None:
        """Re-verify the active constitution (another replica may have loaded a new version);
        an invalid one makes every /v1 request fail with 503 until it is fixed."""
        try:
            self.trust, self.constitution = await verified_constitution(db, self.settings)
            self.failure = None
        except ConstitutionInvalid as exc:
            if self.failure != exc.detail:
                log.error("constitution check failed, refusing requests: %s", exc.detail)
            self.failure = exc.detail

    async def watch(self, db: Database) -> None:
        """Re-check the constitution (and purge old rate-limit hits) every constitution_check_s."""
        while True:
            await asyncio.sleep(self.settings.constitution_check_s)
            try:
                await self.recheck(db)
                await self.limiter.purge()
            except (OSError, psycopg.Error) as exc:  # database away: keep the last verdict
                log.warning("constitution check could not run: %s", exc)

    async def close(self) -> None:
        self.rego.close()
        await self.limiter.close()


async def verified_constitution(db: Database, settings: Settings
                                ) -> tuple[constitution.Trust, constitution.Active]:
    """The trust file and the active constitution, verified; ConstitutionInvalid otherwise."""
    trust = constitution.load_trust(settings.trust_file)
    async with db.system() as conn:
        row = await constitution.active(conn)
    return trust, constitution.check_row(row, trust)


async def prepare(db: Database, settings: Settings, announce: Announce = to_stderr) -> Governance:
    """Bootstrap when enabled, then fail closed unless the constitution verifies."""
    if settings.bootstrap:
        await bootstrap(db, settings, announce)
    trust, active = await verified_constitution(db, settings)
    async with db.system() as conn:
        await signing.ensure_active(conn)
    return Governance(settings=settings, trust=trust, constitution=active,
                      rego=RegoPool(settings.policy_workers, settings.policy_timeout_s),
                      limiter=ratelimit.build(db, settings.redis_url))


async def preflight(settings: Settings, announce: Announce = to_stderr) -> constitution.Active:
    """What `soma serve` checks before binding: migrate, bootstrap, verify the constitution."""
    db = await Database.open(settings)
    try:
        if settings.bootstrap:
            await bootstrap(db, settings, announce)
        return (await verified_constitution(db, settings))[1]
    finally:
        await db.close()
