"""``/healthz``, ``/readyz`` and ``/metrics`` on ``http.listen`` (DESIGN §3.4).

``/healthz`` answers while the event loop turns (the watchdog task stamps
:attr:`Liveness.beat`; a loop stalled longer than ``stall_after`` seconds is not healthy).
``/readyz`` asks each readiness check and answers 503 if any fails, naming it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from boxd.metrics import CONTENT_TYPE, Metrics

#: A readiness check: returns "ok" or a short reason it is not.
Check = Callable[[], Awaitable[str]]


@dataclass
class Liveness:
    """Heartbeat of the event loop, stamped by the supervised watchdog task."""

    stall_after: float = 30.0
    beat: float = field(default_factory=time.monotonic)

    def stamp(self) -> None:
        self.beat = time.monotonic()

    @property
    def stalled_for(self) -> float:
        return max(0.0, time.monotonic() - self.beat - self.stall_after)


def create_health_app(
    metrics: Metrics,
    job_counts: Callable[[], Awaitable[Mapping[str, int]]],
    checks: Mapping[str, Check],
    liveness: Liveness,
) -> web.Application:
    """The health/metrics app; ``checks`` name the readiness checks (store, auth, box)."""

    async def healthz(request: web.Request) -> web.Response:
        if liveness.stalled_for > 0:
            return web.json_response({"status": "stalled", "seconds": round(liveness.stalled_for, 1)}, status=503)
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                results[name] = await check()
            except Exception as exc:  # a failing check is an answer, not a crash of the server
                results[name] = f"error: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": results}, status=200 if ready else 503
        )

    async def metrics_page(request: web.Request) -> web.Response:
        try:
            counts = await job_counts()
        except Exception:  # metrics must still come out when the store is unhappy; readyz says why
            counts = {}
        return web.Response(body=metrics.render(counts), headers={"Content-Type": CONTENT_TYPE})

    async def not_found(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "not_found", "message": f"no route {request.path}", "field": None}}, status=404
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
