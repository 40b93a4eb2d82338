"""Authenticate real system accounts through PAM."""

from __future__ import annotations

import asyncio

import pam

from hpcgate.auth.base import Authenticator


class PamAuthenticator(Authenticator):
    """Asks PAM (as the ``service`` in /etc/pam.d) and maps the user to the same account.

    Without an /etc/pam.d/<service> file PAM uses its ``other`` stack, which on Debian is
    the system's common-auth and common-account.
    """

    def __init__(self, service: str = "hpcgate") -> None:
        self.service = service

    def _check(self, username: str, password: str) -> bool:
        # A fresh handle per call: python-pam keeps per-conversation state on it.
        return bool(pam.pam().authenticate(username, password, service=self.service))

    async def authenticate(self, username: str, password: str) -> str | None:
        ok = await asyncio.to_thread(self._check, username, password)
        return username if ok else None
