"""The gateway's SSH certificate authority: short-lived user certificates, in memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import asyncssh

from hpcgate.config import ConfigError

log = logging.getLogger(__name__)


class CertificateAuthority:
    """Mints short-lived user certificates from the gateway's CA key; keeps them in memory."""

    def __init__(self, ca_key: asyncssh.SSHKey, validity: float) -> None:
        self.ca_key = ca_key
        self.validity = validity
        self._issued: dict[str, tuple[asyncssh.SSHKey, asyncssh.SSHCertificate, float]] = {}

    @classmethod
    def from_file(
        cls, path: Path, validity: float, *, setting: str = "ssh.ca_key"
    ) -> CertificateAuthority:
        """The CA whose private key is in ``path``; ConfigError names ``setting`` if not."""
        fix = (
            f"make one with ssh-keygen -t ed25519 -N '' -f {path} and list {path}.pub in "
            "the login nodes' TrustedUserCAKeys"
        )
        if not path.exists():
            raise ConfigError(f"{setting}: {path} does not exist; {fix}")
        try:
            key = asyncssh.read_private_key(str(path))
        except OSError as exc:
            raise ConfigError(
                f"{setting}: cannot read {path} ({exc.strerror}); give the service's user "
                "read access to it (mode 0600, owned by that user)"
            ) from None
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise ConfigError(
                f"{setting}: {path} is not an unencrypted SSH private key ({exc}); {fix}"
            ) from None
        return cls(key, validity)

    def credentials(self, user: str) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        """A key and a certificate for ``user``, renewed once a third of its life is left."""
        issued = self._issued.get(user)
        now = time.time()
        if issued is None or issued[2] - now < self.validity / 3:
            key = asyncssh.generate_private_key("ssh-ed25519")
            certificate = self.ca_key.generate_user_certificate(
                key,
                f"hpcgate:{user}:{int(now)}",
                principals=[user],
                valid_after=int(now) - 60,  # tolerate small clock skew
                valid_before=int(now + self.validity),
                permit_x11_forwarding=False,
                permit_agent_forwarding=False,
                permit_port_forwarding=False,
                permit_pty=False,
                permit_user_rc=False,
                touch_required=False,
            )
            issued = (key, certificate, now + self.validity)
            self._issued[user] = issued
            log.info("issued a %ds certificate for %s", self.validity, user)
        return issued[0], issued[1]
