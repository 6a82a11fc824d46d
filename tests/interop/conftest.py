"""Fixtures of the interop suite: the OAuth provider stand-in and one smtpgate for the whole session."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.fixtures.oauth_server import OAuthServer
from tests.fixtures.server import RunningServer, run_server

from .common import CONFIG, add_store_user, clear_spool


@pytest.fixture(scope="session")
def oauth_idp() -> Iterator[OAuthServer]:
    server = OAuthServer()
    try:
        yield server
    finally:
        server.down()


@pytest.fixture(scope="session")
def interop_server(tmp_path_factory: pytest.TempPathFactory, oauth_idp: OAuthServer) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("interop")
    add_store_user(tmp / "users.db")
    with run_server(CONFIG.replace("@JWKS@", oauth_idp.jwks_url), tmp) as srv:
        yield srv


@pytest.fixture
def srv(interop_server: RunningServer, oauth_idp: OAuthServer) -> RunningServer:
    oauth_idp.reset()
    clear_spool(interop_server)
    del interop_server.logs[:]
    return interop_server


