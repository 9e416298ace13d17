"""Fixtures for the integration tests: real roomcast processes (and, where a test asks for it,
real PostgreSQL and Redis), with their logs printed when a test fails."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from rc import Server  # noqa: E402


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture
def server_factory(request):
    """Starts roomcast processes with extra environment; stops them after the test and prints
    their logs if it failed."""
    servers = []

    def start(env=None, wait=True, host="127.0.0.1"):
        s = Server(env, host=host)
        servers.append(s)
        return s.start(wait=wait)

    yield start
    for s in servers:
        s.stop()
        if _failed(request):
            print(f"\n----- roomcast log (port {s.port}) -----\n{s.logs()}", file=sys.stderr)
        s.cleanup()


@pytest.fixture
def server(server_factory):
    return server_factory({"NOTIFY_TOKEN": "notify-secret"})
