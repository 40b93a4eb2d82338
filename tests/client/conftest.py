"""The client and CLI sit above the transport: they run against the local one only."""

from __future__ import annotations

import pytest

from tests.conftest import Server


@pytest.fixture(scope="session")
def server(local_server: Server) -> Server:
    return local_server
