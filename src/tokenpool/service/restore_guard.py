"""The service refuses to hand out pairs from a database restored from a backup until it is fenced.

Opt-in (``TOKENPOOL_RESTORE_EPOCH_FILE``, db/restore_fence.py): at start, and every
``TOKENPOOL_RESTORE_EPOCH_INTERVAL_S``, the service advances the restore epoch. While the database's epoch is
older than the file's (a restore) every route but ``/healthz`` and ``/metrics`` answers a 503 problem
``RESTORE_FENCE_REQUIRED``, ``/readyz`` included, so the instance leaves the load balancer's rotation; the
operator runs ``tokenpool db after-restore`` and the next check lifts it. Until the first check has
succeeded (the database did not answer yet) the same routes answer 503 ``RESTORE_EPOCH_UNCHECKED``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from tokenpool.db.restore_fence import RESTORE_FENCE_REQUIRED, RestoreFenceRequired
from tokenpool.observability.logging import get_logger
from tokenpool.observability.masking import mask_text
from tokenpool.service.problems import problem_response

log = get_logger("tokenpool.service.restore")

RESTORE_EPOCH_UNCHECKED = "RESTORE_EPOCH_UNCHECKED"
_OPEN_PATHS = frozenset({"/healthz", "/metrics"})
_UNCHECKED_RETRY_S = 2.0


class RestoreGuard:
    """The restore epoch's last verdict. ``advance`` is the blocking check (a thread runs it)."""

    def __init__(self, advance: Callable[[], int], interval_s: float, retry_after_s: float) -> None:
        self._advance = advance
        self.interval_s = interval_s
        self.retry_after_s = retry_after_s
        self.checked = False
        self.required: str | None = None

    async def check(self) -> None:
        try:
            epoch = await asyncio.to_thread(self._advance)
        except RestoreFenceRequired as refused:
            if self.required is None:
                log.error("service.restore_fence_required", reason=str(refused),
                          effect="every route but /healthz and /metrics answers 503 RESTORE_FENCE_REQUIRED")
            self.required = str(refused)
            self.checked = True
        except Exception as error:
            log.warning("service.restore_epoch_unchecked", error_type=type(error).__name__,
                        error=mask_text(str(error))[:300])
        else:
            if self.required is not None:
                log.info("service.restore_fence_done", epoch=epoch)
            self.required = None
            self.checked = True

    async def run(self) -> None:
        """Checks until cancelled: every interval, or every few seconds until a first check succeeds."""
        while True:
            await asyncio.sleep(self.interval_s if self.checked else min(_UNCHECKED_RETRY_S, self.interval_s))
            await self.check()

    def refusal(self) -> tuple[str, str] | None:
        if self.required is not None:
            return RESTORE_FENCE_REQUIRED, f"Restored from a backup and not fenced yet: {self.required}."
        if not self.checked:
            return RESTORE_EPOCH_UNCHECKED, "The database's restore epoch could not be checked yet; retry later."
        return None


@contextlib.asynccontextmanager
async def running(guard: RestoreGuard | None) -> AsyncIterator[None]:
    """The first check, then the periodic ones for the lifespan of the app."""
    if guard is None:
        yield
        return
    await guard.check()
    task = asyncio.create_task(guard.run(), name="restore-epoch")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class RestoreGuardMiddleware:
    """Answers 503 for every route but /healthz and /metrics while the guard refuses."""

    def __init__(self, app: ASGIApp, guard: RestoreGuard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self.guard.refusal() if scope["type"] == "http" and scope["path"] not in _OPEN_PATHS else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        code, detail = refusal
        response = problem_response(503, code, detail,
                                    headers={"Retry-After": str(max(1, round(self.guard.retry_after_s)))})
        await response(scope, receive, send)
