"""Certificates for a Docker engine on `tcp://` with TLS verification, from a throwaway CA.

    certs = DockerTls.create(tmp_path)
    dockerd ... --tlsverify --tlscacert {certs.ca} --tlscert {certs.server_cert} --tlskey ...
    LABELSYNC_DOCKER_HOST=tcp://127.0.0.1:PORT?tls={certs.client_dir}

The layout is Docker's own ("Protect the Docker daemon socket"): the engine holds the CA, its
certificate and key; the client a directory with `ca.pem`, `cert.pem` and `key.pem`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class DockerTls:
    ca: Path
    server_cert: Path
    server_key: Path
    client_dir: Path  # ca.pem, cert.pem, key.pem

    @classmethod
    def create(cls, directory: Path, *, server_name: str = "127.0.0.1") -> DockerTls:
        ca = trustme.CA()
        server = ca.issue_cert(server_name)
        client = ca.issue_cert("labelsync-client")
        directory.mkdir(parents=True, exist_ok=True)
        client_dir = directory / "client"
        client_dir.mkdir(exist_ok=True)
        certs = cls(
            ca=directory / "ca.pem",
            server_cert=directory / "server-cert.pem",
            server_key=directory / "server-key.pem",
            client_dir=client_dir,
        )
        ca.cert_pem.write_to_path(str(certs.ca))
        server.cert_chain_pems[0].write_to_path(str(certs.server_cert))
        server.private_key_pem.write_to_path(str(certs.server_key))
        ca.cert_pem.write_to_path(str(client_dir / "ca.pem"))
        client.cert_chain_pems[0].write_to_path(str(client_dir / "cert.pem"))
        client.private_key_pem.write_to_path(str(client_dir / "key.pem"))
        for key in (certs.server_key, client_dir / "key.pem"):
            key.chmod(0o600)
        return certs

    def flags(self, listen: str) -> list[str]:
        """The dockerd flags that serve `listen` (`127.0.0.1:PORT`) with these."""
        return [
            "--tlsverify",
            f"--tlscacert={self.ca}",
            f"--tlscert={self.server_cert}",
            f"--tlskey={self.server_key}",
            f"-H=tcp://{listen}",
        ]
