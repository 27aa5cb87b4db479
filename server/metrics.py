"""Prometheus metrics at /metrics: counters bumped where things happen, gauges read on scrape."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

REGISTRY = CollectorRegistry()

RELAYED_BYTES = Counter("porthole_relayed_bytes", "Session payload bytes relayed",
                        ["direction"], registry=REGISTRY)
AUTH_FAILURES = Counter("porthole_authentication_failures", "Refused authentications",
                        ["peer", "code"], registry=REGISTRY)
FRAME_ERRORS = Counter("porthole_frame_errors", "Connections closed for a protocol error",
                       ["peer", "code"], registry=REGISTRY)


class LiveCollector:
    """Gauges computed when scraped, from the running server's state."""

    def __init__(self, agents_by_region: Callable[[], dict[str, int]],
                 sessions_by_kind: Callable[[], dict[str, int]]) -> None:
        self.agents_by_region = agents_by_region
        self.sessions_by_kind = sessions_by_kind
        self.invocation_statuses: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        agents = GaugeMetricFamily("porthole_agents_online", "Agents connected to this server",
                                   labels=["region"])
        for region, n in sorted(self.agents_by_region().items()):
            agents.add_metric([region], n)
        yield agents
        sessions = GaugeMetricFamily("porthole_sessions_active", "Open sessions by kind",
                                     labels=["kind"])
        for kind, n in sorted(self.sessions_by_kind().items()):
            sessions.add_metric([kind], n)
        yield sessions
        results = GaugeMetricFamily("porthole_invocation_results",
                                    "Per-instance invocation results by status",
                                    labels=["status"])
        for status, n in sorted(self.invocation_statuses.items()):
            results.add_metric([status], n)
        yield results

    async def refresh_invocations(self, engine: Any, every: float = 15.0) -> None:
        """Counting rows on every scrape would load the database; count them periodically."""
        while True:
            with contextlib.suppress(Exception):
                async with engine.connect() as conn:
                    rows = await conn.execute(sa.text(
                        "SELECT status, COUNT(*) FROM invocation_results GROUP BY status"))
                    self.invocation_statuses = {r[0]: r[1] for r in rows}
            await asyncio.sleep(every)
