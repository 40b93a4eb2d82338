"""The SSH transport: actions run on a machine's login nodes, as the user, over SSH.

The gateway holds no password or private key of any user. It holds an SSH certificate
authority key (:mod:`.authority`); for each user it generates a key pair in memory and
signs a short-lived certificate for it (principal = the user's name, no forwarding), which
login nodes trust through ``TrustedUserCAKeys``. Host keys are always checked against a
known_hosts file. Connections are pooled (:mod:`.pool`); the runner (:mod:`.runner`)
runs each action over a channel and leaves nothing of it behind.
"""

from hpcgate.runners.ssh.authority import CertificateAuthority
from hpcgate.runners.ssh.runner import SshRunner

__all__ = ["CertificateAuthority", "SshRunner"]
