"""The container image's entrypoint (`Containerfile`): start as root just long enough to
take the Docker socket's group, then run `labelsync ARGS…` as the image's own user.

The socket's group differs from host to host (`docker`, often gid 999 or 998; root on
some engines), so no image can name it in advance, and `group_add` would need it exported
by hand. Started as root, this reads the group of the socket labelsync will open
(`LABELSYNC_DOCKER_HOST` or `DOCKER_HOST` when `unix://`, else `/var/run/docker.sock`),
keeps it as the one supplementary group (with any added by `--group-add`), becomes uid
and gid 10001 (`labelsync`) and execs labelsync, which keeps PID 1 and every signal. One
log line says which group it took. Started as another user (`--user`, `user:`), it execs
labelsync as that user unchanged. The standard library only: it runs before anything
else, on any Python image.
"""

from __future__ import annotations

import datetime
import grp
import json
import os
import pwd
import stat
import sys
from collections.abc import Mapping, Sequence

from labelsync.core.defaults import DOCKER_SOCKET, UNSET_WORDS
from labelsync.core.endpoints import unix_socket_path

USER_ID = 10001
GROUP_ID = 10001
QUIET_LEVELS = ("SUCCESS", "WARNING", "ERROR")  # above INFO (loguru's)


def docker_socket(environ: Mapping[str, str]) -> str | None:
    """The unix socket labelsync will open, as labelsync picks it; None for a TCP or SSH
    engine (no file, no group to take)."""
    chosen = environ.get("LABELSYNC_DOCKER_HOST", "").strip()
    if chosen.lower() in UNSET_WORDS:
        chosen = environ.get("DOCKER_HOST", "").strip()
    if not chosen:
        return DOCKER_SOCKET
    path = unix_socket_path(chosen)
    if path is None:
        return None
    return path if path.startswith("/") else f"/{path}"


def added_groups() -> list[int]:
    """The supplementary groups `--group-add` (compose: `group_add`) gave this root process:
    its groups less root's own (0, and those /etc/group lists root in, as some bases do)."""
    roots = {0} | {entry.gr_gid for entry in grp.getgrall() if "root" in entry.gr_mem}
    return [gid for gid in os.getgroups() if gid not in roots]


def socket_group(path: str | None) -> tuple[int | None, str, bool]:
    """The socket's gid (None when there is none to take), what to log, and whether
    labelsync will not reach Docker through it: no socket there, or one that group may
    not open (connecting takes write permission). A WARNING then."""
    if path is None:
        return None, "the Docker engine is not a unix socket: no group to take", False
    try:
        info = os.stat(path)
    except OSError as exc:  # labelsync will not reach Docker there: said as a WARNING
        return None, f"no Docker socket at {path} ({exc.strerror}): no group to take", True
    if not stat.S_ISSOCK(info.st_mode):
        return None, f"{path} is not a socket: no group to take", True
    mode = stat.S_IMODE(info.st_mode)
    line = f"took the group of {path} (gid {info.st_gid}, mode {mode:04o})"
    refused = not mode & (stat.S_IWGRP | stat.S_IWOTH)
    if refused:
        line += ", which that group may not open: labelsync cannot reach Docker"
    return info.st_gid, line, refused


def log(message: str, environ: Mapping[str, str], *, warning: bool = False) -> None:
    """One line shaped like labelsync's own (text, or JSON with LABELSYNC_LOG_FORMAT=json)."""
    level = "WARNING" if warning else "INFO"
    if not warning and environ.get("LABELSYNC_LOG_LEVEL", "INFO").upper() in QUIET_LEVELS:
        return
    now = datetime.datetime.now().astimezone()
    if environ.get("LABELSYNC_LOG_FORMAT", "text").lower() == "json":
        record = {
            "time": now.isoformat(),
            "level": level,
            "message": message,
            "logger": "labelsync.app.entrypoint",
        }
        line = json.dumps(record)
    else:
        line = f"{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d} {level: <7} {message}"
    print(line, file=sys.stderr, flush=True)


def image_user() -> tuple[int, int, str]:
    """uid, gid and home of the image's user (uid 10001 in /etc/passwd)."""
    try:
        entry = pwd.getpwuid(USER_ID)
    except KeyError:
        return USER_ID, GROUP_ID, "/"
    return entry.pw_uid, entry.pw_gid, entry.pw_dir


def drop_privileges(environ: dict[str, str]) -> None:
    """As root: the socket's group (and `--group-add`'s), then the image's user for good."""
    gid, line, refused = socket_group(docker_socket(environ))
    groups = list(dict.fromkeys([*([] if gid is None else [gid]), *added_groups()]))
    user_id, group_id, home = image_user()
    try:
        os.setgroups(groups)
        os.setgid(group_id)
        os.setuid(user_id)  # real, effective and saved at once: root's capabilities go too
    except PermissionError:  # root without CAP_SETUID/CAP_SETGID (`cap_drop: [ALL]`)
        log(
            f"{line}; cannot become uid {user_id}: this root lacks the SETUID/SETGID "
            "capabilities (cap_drop), so labelsync runs as root without them. To run as "
            f'uid {user_id}, start the container with `user: "{user_id}"` and `group_add` '
            "(the socket's gid), or `cap_add: [SETUID, SETGID]`",
            environ,
            warning=True,
        )
        return
    if environ.get("HOME", "/root") == "/root":  # root's, as Docker sets it
        environ["HOME"] = home
    names = ", ".join(str(g) for g in groups) or "none"
    message = f"{line}; running as uid {user_id}, gid {group_id}, groups {names}"
    log(message, environ, warning=refused)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    if os.geteuid() == 0:
        drop_privileges(environ)
    os.execvpe("labelsync", ["labelsync", *arguments], environ)


if __name__ == "__main__":
    main()
