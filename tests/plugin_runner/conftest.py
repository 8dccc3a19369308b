"""Fixtures for plugin-runner tests: real runner processes on Unix sockets in tmp dirs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from runner_harness import Runner, RunnerFactory, python_runner_args, start_runner


@pytest.fixture
def runner_factory(tmp_path: Path) -> Iterator[RunnerFactory]:
    """Start runners (stopped at teardown): `factory(args=None, name="runner.sock")`."""
    started: list[Runner] = []

    def make(args: list[str] | None = None, name: str = "runner.sock") -> Runner:
        runner = start_runner(args or python_runner_args(), tmp_path / name)
        started.append(runner)
        return runner

    yield make
    for runner in started:
        runner.process.stop()


@pytest.fixture(scope="module")
def python_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    """One Python runner with the example and sample plugins, shared by a module's read-mostly tests."""
    runner = start_runner(python_runner_args(), tmp_path_factory.mktemp("py") / "runner.sock")
    yield runner
    runner.process.stop()
