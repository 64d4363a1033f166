"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from somastack import __version__
from somastack.agent.turns import purge_turns
from somastack.api import (
    audit,
    auth,
    brain,
    constitution,
    governance,
    health,
    memory,
    personas,
    problems,
    turn,
    usage,
)
from somastack.api.deps import AppState
from somastack.api.metrics import LatencyMiddleware, Metrics
from somastack.brain import memory as memory_store
from somastack.brain.embed import AsyncEmbedder, build_embedder
from somastack.brain.feedback import purge_traces
from somastack.config import Settings, get_settings
from somastack.governance.runtime import prepare
from somastack.ledger import expire_reservations
from somastack.store import Database
from somastack.store.outbox_relay import OutboxRelay

log = logging.getLogger("somastack.api")
PURGE_EVERY_S = 60.0
STALE_RESERVATION_S = 900.0  # far beyond the longest model call or tool run


async def _purge_forever(db: Database, settings: Settings) -> None:
    while True:
        await asyncio.sleep(PURGE_EVERY_S)
        try:
            await memory_store.purge_expired(db)
        except Exception:  # keep purging on the next tick; reads hide expired rows anyway
            log.exception("purging expired memories failed")
        try:  # holds of steps whose process died: give the budget back
            await expire_reservations(db, STALE_RESERVATION_S)
        except Exception:
            log.exception("expiring stale budget reservations failed")
        try:
            await purge_traces(db, settings.brain_trace_days)
        except Exception:
            log.exception("deleting old recall traces failed")
        try:
            await purge_turns(db, settings.turn_days)
        except Exception:
            log.exception("deleting old turns failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API; the database and the embedder open in the lifespan."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = await Database.open(settings)
        try:
            gov = await prepare(db, settings)  # fails closed on a bad constitution
        except BaseException:
            await db.close()
            raise
        embedder = AsyncEmbedder(await asyncio.to_thread(build_embedder, settings),
                                 coalesce_ms=settings.embed_coalesce_ms)
        gc.freeze()  # what start-up allocated is permanent: keep full collections short (p99)
        # A request allocates tens of thousands of short-lived objects, nearly all freed by
        # reference counting. With CPython's default (700, 10, 10) the collector still ran ~17
        # young and ~1.5 middle collections per agent turn, the latter 1.4-3.9 ms pauses that
        # made the turn's tail latency; collect the young generation 70x less often instead.
        gc.set_threshold(50_000, 20, 10)
        # The embedding thread needs the GIL between its model runs (tokens in, vectors out),
        # and with CPython's 5 ms switch interval it waited up to that long each time while the
        # event loop held it. At 0.5 ms, recall at concurrency 8 measured p95 −11% and 7% more
        # queries/s in 8 paired runs (docs/recall.md, Speed).
        sys.setswitchinterval(settings.gil_switch_ms / 1000)
        app.state.soma = AppState(settings=settings, db=db, embedder=embedder, metrics=metrics,
                                  governance=gov)
        relay = OutboxRelay(db, settings) if settings.nats_url else None
        tasks = [asyncio.create_task(_purge_forever(db, settings)), asyncio.create_task(gov.watch(db))]
        if relay is not None:
            tasks.append(asyncio.create_task(relay.run_forever()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if relay is not None:
                await relay.close()
            await gov.close()
            await db.close()
            embedder.close()

    app = FastAPI(
        title="SomaStack", version=__version__, lifespan=lifespan,
        description="Long-term memory and governed runtime for AI agents.",
    )
    app.state.metrics = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    problems.install(app)
    app.include_router(health.router)
    app.include_router(memory.router)
    app.include_router(brain.router)
    for router in (governance.router, auth.router, constitution.router, audit.router,
                   personas.router, usage.router, turn.router):
        app.include_router(router)
    return app
