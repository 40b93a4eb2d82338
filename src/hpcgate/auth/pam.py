"""Authenticate real system accounts through PAM."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from ctypes import CFUNCTYPE, c_int, c_uint, c_void_p, cast
from typing import Any

import pam

from hpcgate.auth.base import Authenticator
from hpcgate.config import AuthConfig

PAM_FAIL_DELAY = 10  # pam_set_item: the application's own function for a failure's delay


def _no_delay(status: int, microseconds: int, appdata: int | None) -> None:
    """Called by libpam instead of sleeping out a failure's delay (pam_unix asks for 2 s,
    which libpam randomises: 1.6-2.4 s measured here): the thread is free at once, and the
    login service answers every failure at one deadline, waiting in the event loop."""


_NO_DELAY_FUNCTION = CFUNCTYPE(None, c_int, c_uint, c_void_p)(_no_delay)  # kept alive here
_NO_DELAY = cast(_NO_DELAY_FUNCTION, c_void_p)


class PamAuthenticator(Authenticator):
    """Asks PAM (as the ``service`` in /etc/pam.d) and maps the user to the same account.

    Without an /etc/pam.d/<service> file PAM uses its ``other`` stack, which on Debian is
    the system's common-auth and common-account.
    """

    def __init__(self, service: str = "hpcgate", threads: int = 4) -> None:
        self.service = service
        # PAM's own pool: a flood of logins never takes the threads other requests use.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hpcgate-pam")

    @classmethod
    def from_config(cls, config: AuthConfig) -> PamAuthenticator:
        return cls(config.pam_service, config.login_threads)

    def _check(self, username: str, password: str) -> bool:
        # A fresh handle per call: python-pam keeps per-conversation state on it.
        handle = pam.pam()
        authenticate = handle.pam_authenticate

        def without_fail_delay(pamh: Any, flags: int) -> int:
            handle.pam_set_item(pamh, PAM_FAIL_DELAY, _NO_DELAY)
            return int(authenticate(pamh, flags))

        handle.pam_authenticate = without_fail_delay
        return bool(handle.authenticate(username, password, service=self.service))

    async def authenticate(self, username: str, password: str) -> str | None:
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, self._check, username, password)
        return username if ok else None
