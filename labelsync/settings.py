"""Settings, from LABELSYNC_* environment variables or a TOML file (environment wins).

    LABELSYNC_CONFIG=/etc/labelsync/labelsync.toml labelsync run

where the TOML file holds the same names in lower case without the prefix::

    caddy_admin = "http://localhost:2019"
    debounce = "50ms"
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from labelsync.core import defaults
from labelsync.core.durations import parse_duration
from labelsync.core.endpoints import has_relative_path
from labelsync.core.engines import EngineSpec, parse_engines

# Where `LABELSYNC_CADDY_ADMIN=auto` (and `labelsync status`) look for a running Caddy first.
DEFAULT_CADDY_ADMIN = "http://localhost:2019"
# The admin socket of `systemd/labelsync-caddy.service` (the production shape).
CADDY_UNIT_ADMIN = "unix:///run/labelsync-caddy/admin.sock"
# What `LABELSYNC_CADDY_ADMIN=auto` tries, in order, before starting the bundled Caddy.
AUTO_CADDY_ADMINS = (DEFAULT_CADDY_ADMIN, CADDY_UNIT_ADMIN)


@functools.lru_cache(maxsize=64)
def seconds(duration: str) -> float:
    """`parse_duration`, once per distinct text."""
    return parse_duration(duration)


class Settings(BaseSettings):
    """Everything an operator can set; see the settings table in docs/operations.md."""

    model_config = SettingsConfigDict(env_prefix="LABELSYNC_", extra="ignore")

    caddy_admin: str = "auto"
    """Admin endpoint(s), comma-separated: http://host:port, unix:///path, `embedded`, `auto`."""
    caddy_server: str = defaults.CADDY_SERVER
    """Server name in apps.http.servers that labelsync writes into."""
    listen: str = ",".join(defaults.LISTEN)
    """Listen addresses when labelsync creates the server."""
    auto_https: Literal["on", "off", "disable_redirects"] = defaults.AUTO_HTTPS
    """Caddy automatic HTTPS for the server labelsync creates."""
    http_port: int | None = None
    """The listen port that speaks plain HTTP (and redirects); derived from `listen` when unset."""
    https_port: int | None = None
    """The listen port that speaks HTTPS; derived from `listen` when unset (caddy/listen.py)."""
    install_trust: bool = False
    """Let the bundled Caddy add its local root CA to the host's trust store."""
    caddy_metrics: Literal["auto", "on", "off"] = defaults.CADDY_METRICS
    """Caddy's per-host request counters: `auto` reads them where they are on (opt-in:
    they cost Caddy throughput); `on` turns them on in the bundled Caddy's config and in
    an external Caddy (one config write at start); `off` neither (core/caddy_metrics.py)."""
    label_prefix: str = defaults.LABEL_PREFIX
    """Prefix of every label labelsync reads."""
    network: str | None = None
    """Default Docker network whose address is used."""
    debounce: str = "50ms"
    """Quiet window that coalesces bursts of events."""
    debounce_max: str = "500ms"
    """Longest a change waits while events keep coming."""
    resync_interval: str = "60s"
    """Periodic full reconcile (drift, missed events)."""
    static_file: Path | None = None
    """TOML file of extra routes for non-container backends."""
    swarm: Literal["auto", "on", "off"] = "auto"
    """Read Swarm services and tasks."""
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"] = "INFO"
    """Lowest level logged."""
    log_format: Literal["text", "json"] = "text"
    """Human text, or one JSON object per line."""
    metrics_listen: str | None = None
    """host:port of the Prometheus /metrics and /healthz endpoint; off when unset."""
    dashboard_listen: str | None = "127.0.0.1:9465"
    """host:port of the read-only web dashboard; `off` (or empty) turns it off."""
    upstreams: Literal["dynamic", "static"] = defaults.UPSTREAMS
    """Membership through the built-in resolver, or written into Caddy's JSON."""
    resolver_listen: str = defaults.RESOLVER_LISTEN
    """UDP host:port of the built-in resolver, or unix:///path (a stream socket)."""
    resolver_advertise: str | None = None
    """Address Caddy uses to reach the resolver; the listen address when unset."""
    resolver_refresh: str = defaults.RESOLVER_REFRESH
    """How often Caddy re-reads a pool's members."""
    dynamic_budget: int = Field(default=defaults.DYNAMIC_BUDGET, ge=0, le=100)
    """Most pools served by the resolver; past it, quiet pools carry members in the JSON."""
    stream_close_delay: str = defaults.STREAM_CLOSE_DELAY
    """How long upgraded connections (websockets) outlive a Caddy reload."""
    dial_timeout: str = "500ms"
    """Upstream dial timeout of pools without `timeout.dial`; empty: Caddy's (3s)."""
    docker_host: str | None = None
    """Docker endpoint(s), comma-separated, each with its options (core/engines.py);
    DOCKER_HOST or the local socket when unset."""
    state_file: Path | None = None
    """Where the daemon writes its live state for `labelsync status`; see state_file.py."""

    @field_validator(
        "debounce", "debounce_max", "resync_interval", "resolver_refresh", "stream_close_delay"
    )
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # raises ValueError naming the problem
        return value

    @field_validator("resolver_listen", "resolver_advertise")
    @classmethod
    def _resolver_address(cls, value: str | None) -> str | None:
        if value and has_relative_path(value):
            raise ValueError("a unix socket needs an absolute path: unix:///run/labelsync/dns.sock")
        return value

    @field_validator("docker_host")
    @classmethod
    def _engines(cls, value: str | None) -> str | None:
        parse_engines(value)  # raises ValueError naming the bad engine
        return value

    @field_validator("dial_timeout")
    @classmethod
    def _optional_duration(cls, value: str) -> str:
        if value.strip():
            parse_duration(value)
        return value.strip()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "network",
        "metrics_listen",
        "resolver_advertise",
        "static_file",
        "docker_host",
        "state_file",
        "http_port",
        "https_port",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("dashboard_listen", mode="before")
    @classmethod
    def _off_is_unset(cls, value: Any) -> Any:
        if value is False or value is None:
            return None
        if isinstance(value, str) and value.strip().lower() in defaults.UNSET_WORDS:
            return None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("LABELSYNC_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    # Durations in seconds, each text parsed once (the loop reads them on every event).
    # Cached by the text rather than on the instance: `model_copy(update=...)` (SIGHUP)
    # copies an instance's cache along with it, but not its validation.
    @property
    def debounce_seconds(self) -> float:
        return seconds(self.debounce)

    @property
    def debounce_max_seconds(self) -> float:
        return seconds(self.debounce_max)

    @property
    def resync_seconds(self) -> float:
        return seconds(self.resync_interval)

    @property
    def listen_addresses(self) -> list[str]:
        return [a.strip() for a in self.listen.split(",") if a.strip()]

    @property
    def engines(self) -> tuple[EngineSpec, ...]:
        return parse_engines(self.docker_host)

    @property
    def resolver_address(self) -> str:
        return self.resolver_advertise or self.resolver_listen


# What `check` and `render` take from a running daemon: everything that changes what the
# labels and the static file produce, or where the server listens.
SHARED_WITH_CLI = (
    "static_file",
    "listen",
    "auto_https",
    "http_port",
    "https_port",
    "install_trust",
    "label_prefix",
    "network",
    "upstreams",
    "resolver_listen",
    "resolver_advertise",
    "resolver_refresh",
    "stream_close_delay",
    "dial_timeout",
    "caddy_server",
    "docker_host",
    "swarm",
)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings a running daemon shares with the CLI, as JSON (the state file)."""
    shared = settings.model_dump(include=set(SHARED_WITH_CLI), mode="json")
    if settings.static_file is not None:
        shared["static_file"] = str(settings.static_file.absolute())
    return shared


def with_daemon_settings(settings: Settings, shared: dict[str, Any]) -> Settings:
    """`settings` with a running daemon's shared settings in place of its own."""
    known = {k: v for k, v in shared.items() if k in SHARED_WITH_CLI}
    return Settings.model_validate({**settings.model_dump(), **known})


def load_settings() -> Settings:
    """Read settings; ConfigError with one line naming each bad variable (or the file)."""
    from pydantic import ValidationError

    from labelsync.errors import ConfigError

    try:
        return Settings()
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{os.environ.get('LABELSYNC_CONFIG')}: {exc}") from exc
    except ValidationError as exc:
        reasons = "; ".join(
            f"LABELSYNC_{'_'.join(str(p) for p in error['loc']).upper()}="
            f"{error.get('input')!r}: {error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise ConfigError(reasons) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc
