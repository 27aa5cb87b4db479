from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Agent, Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path).start()
    yield srv
    srv.stop()
    log = srv.log()
    if "Traceback" in log:  # shown with a failing test's captured output
        print(f"--- server log with a traceback ---\n{log[log.index('Traceback') - 300:][:6000]}")


@pytest.fixture
def make_agent(server: Server, tmp_path: Path) -> Iterator:
    agents: list[Agent] = []

    def make(start: bool = True, **kwargs) -> Agent:
        agent = Agent(server, tmp_path / f"agent{len(agents)}", **kwargs)
        agents.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in agents:
        agent.stop()
