"""Real sshd's on loopback acting as a machine's login nodes, trusting a test SSH CA."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class LoginNodes:
    """``count`` sshd's with their own host keys; ``known_hosts`` lists them all."""

    def __init__(self, directory: Path, ports: list[int]) -> None:
        self.directory = directory
        self.ports = ports
        self.ca_key = directory / "ca"
        self.known_hosts = directory / "known_hosts"
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        _keygen(self.ca_key)
        lines = []
        for port in ports:
            host_key = directory / f"host-{port}"
            _keygen(host_key)
            pub = (host_key.with_suffix(".pub")).read_text().split()
            lines.append(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
            (directory / f"sshd-{port}.conf").write_text(
                f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {directory}/sshd-{port}.pid
TrustedUserCAKeys {self.ca_key}.pub
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
StrictModes no
MaxSessions 10
AllowTcpForwarding no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
"""
            )
        self.known_hosts.write_text("".join(lines))

    def start(self, port: int) -> None:
        if port in self.processes:
            return
        log = (self.directory / f"sshd-{port}.log").open("ab")
        self.processes[port] = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.directory / f"sshd-{port}.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while not _listening(port):
            if time.monotonic() > deadline or self.processes[port].poll() is not None:
                raise RuntimeError(f"sshd on {port} did not start; see {log.name}")
            time.sleep(0.05)

    def stop(self, port: int) -> None:
        process = self.processes.pop(port, None)
        if process is not None:
            process.terminate()
            process.wait(timeout=10)

    def start_all(self) -> None:
        for port in self.ports:
            self.start(port)

    def stop_all(self) -> None:
        for port in list(self.processes):
            self.stop(port)

    def ssh_section(self) -> str:
        hosts = ", ".join(f'"127.0.0.1:{port}"' for port in self.ports)
        return (
            f'{{ hosts = [{hosts}], known_hosts = "{self.known_hosts}", '
            f'ca_key = "{self.ca_key}", host_retry_after = 2 }}'
        )
