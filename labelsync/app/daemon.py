"""`labelsync run`: wire the edges to the loop, handle signals, stop cleanly.

SIGTERM/SIGINT stop within a second and leave Caddy's config as it is (an embedded
Caddy is stopped with us). SIGHUP re-reads settings that can change live and the
static file, then resyncs everything (RELOADING=1, then READY=1, to systemd).

One reconciler per Caddy endpoint; they share one Docker source (one event stream,
shared listings) and one static file watch (see loop/fanout.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from labelsync.caddy.admin import CaddyAdmin, answers
from labelsync.core.caddy_metrics import MetricsState, how_to_count, turns_metrics_on
from labelsync.core.model import Pool
from labelsync.core.traffic import CaddyCounting, TrafficBook
from labelsync.errors import ConfigError, LabelsyncError
from labelsync.loop.fanout import SharedSource, SharedStatic
from labelsync.loop.ports import MembershipChannel, StaticRoutes
from labelsync.loop.reconcile import Reconciler
from labelsync.loop.traffic import TrafficSampler, sample_forever
from labelsync.report.dashboard import Dashboard
from labelsync.report.logs import setup_logging
from labelsync.report.metrics import PING_TIMEOUT
from labelsync.report.observability import Observability
from labelsync.report.sdnotify import SystemdNotifier
from labelsync.report.snapshot import LiveView
from labelsync.report.state_file import state_file_path
from labelsync.settings import AUTO_CADDY_ADMINS, Settings, load_settings
from labelsync.sources.engines import EngineSet
from labelsync.sources.static import StaticFile

if TYPE_CHECKING:
    from labelsync.caddy.embedded import EmbeddedCaddy

TRAFFIC_TIMEOUT = 2.0  # seconds a read of Caddy's counters may take (it holds a write back)

LIVE_SETTINGS = (
    "log_level",
    "log_format",
    "debounce",
    "debounce_max",
    "resync_interval",
    "network",
    "static_file",
)


@dataclasses.dataclass
class CaddyEndpoints:
    """The admin endpoints labelsync writes to, and the bundled Caddy when one of them is."""

    endpoints: list[str]
    bundled: EmbeddedCaddy | None = None
    bundled_pid: int | None = None  # the bundled Caddy's pid when it was stopped

    def stopped_message(self) -> str:
        """The last line of a clean stop: what became of each Caddy."""
        if self.bundled is None:
            return "labelsync stopped; Caddy keeps its config"
        pid = f" (pid {self.bundled_pid})" if self.bundled_pid is not None else ""
        listen = ", ".join(self.bundled.listen)
        gone = f": nothing answers on {listen} any more" if listen else ""
        message = f"labelsync stopped; the bundled Caddy{pid} was stopped with it{gone}"
        others = [e for e in self.endpoints if e != self.bundled.admin_endpoint]
        if others:
            message += f"; the Caddy at {', '.join(others)} keeps its config"
        return message


@contextlib.asynccontextmanager
async def caddy_endpoints(
    settings: Settings, on_restart: Callable[[], None]
) -> AsyncIterator[CaddyEndpoints]:
    """The admin endpoints to write to; starts (and finally stops) the bundled Caddy.

    The bundled Caddy is adopted, not restarted, when an earlier labelsync killed in
    the same runtime directory left it running and healthy (see embedded.py).
    `on_restart` runs when the bundled Caddy came back from a crash with an empty
    config, so that the routes are restored at once rather than at the next resync.
    """
    wanted = [e.strip() for e in settings.caddy_admin.split(",") if e.strip()]
    if wanted == ["auto"]:
        wanted = await _auto_endpoints()
    if "embedded" not in wanted:
        yield CaddyEndpoints(wanted)
        return
    from labelsync.caddy.embedded import EmbeddedCaddy, default_runtime_dir
    from labelsync.caddy.listen import listen_plan

    runtime_dir = default_runtime_dir()
    _lock_runtime_dir(runtime_dir)
    embedded = EmbeddedCaddy(
        runtime_dir=runtime_dir,
        listen=settings.listen_addresses,
        server_name=settings.caddy_server,
        auto_https=settings.auto_https,
        http_port=listen_plan(settings).http_port,
        https_port=listen_plan(settings).https_port,
        install_trust=settings.install_trust,
        http_metrics=turns_metrics_on(settings.caddy_metrics, bundled=True),
        on_restart=on_restart,
    )
    await embedded.start()
    logger.info(
        f"bundled Caddy (pid {embedded.pid}) listens: {embedded.plan.describe()}; "
        f"a route for app.localhost answers at {embedded.plan.try_url('app.localhost')}"
    )
    supervisor = asyncio.create_task(embedded.supervise())
    caddies = CaddyEndpoints(
        [embedded.admin_endpoint if e == "embedded" else e for e in wanted], embedded
    )
    try:
        yield caddies
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        caddies.bundled_pid = embedded.pid
        await embedded.stop()


async def _auto_endpoints() -> list[str]:
    """`auto`: the first Caddy that answers of AUTO_CADDY_ADMINS, else the bundled one."""
    for endpoint in AUTO_CADDY_ADMINS:
        if await answers(endpoint):
            logger.info(f"using the Caddy answering at {endpoint}")
            return [endpoint]
    tried = ", ".join(AUTO_CADDY_ADMINS)
    logger.info(f"no Caddy answers at {tried}; starting the bundled Caddy")
    return ["embedded"]


def _lock_runtime_dir(runtime_dir: Path) -> None:
    """One labelsync per runtime directory: a second one must not touch the first's Caddy.

    The lock lives as long as the process (the descriptor is deliberately kept open).
    """
    runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(runtime_dir / "labelsync.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(descriptor)
        raise ConfigError(
            f"another labelsync runs with the bundled Caddy in {runtime_dir}; stop it, or set "
            "XDG_RUNTIME_DIR to give this one its own"
        ) from exc
    _HELD_LOCKS.append(descriptor)


_HELD_LOCKS: list[int] = []


def _membership(
    settings: Settings,
) -> contextlib.AbstractAsyncContextManager[MembershipChannel | None]:
    if settings.upstreams != "dynamic":
        return contextlib.nullcontext(None)
    from labelsync.membership.channel import DynamicMembership

    return DynamicMembership.running(settings)


def _budget_follows_health(
    reconcilers: list[Reconciler], membership: MembershipChannel | None
) -> None:
    """A health flip in a pool whose members the JSON carries (outside the dynamic
    budget) needs a sync: the pool joins the budget, or its list changes."""
    from labelsync.membership.channel import DynamicMembership

    if not isinstance(membership, DynamicMembership):
        return

    def flipped(pool_id: str, *_: object) -> None:
        for reconciler in reconcilers:
            if pool_id in reconciler.json_pools:
                reconciler.notify()

    membership.on_health_change.append(flipped)


def _reachability_check(
    reconcilers: list[Reconciler],
    admins: list[CaddyAdmin],
    membership: MembershipChannel | None,
    settings: Settings,
) -> asyncio.Task[None] | None:
    """Dynamic mode: confirm once that each Caddy asks the resolver (see reachability.py).

    One Caddy after the other: the check counts the resolver's pool queries, which any
    Caddy's lookups would raise.
    """
    if membership is None:
        return None
    from labelsync.app.reachability import check_after_first_sync, log_first_lookup

    def serves(pool: Pool) -> bool:
        """A member passed its check, or has none to pass: a probe will not fail there."""
        verdicts = membership.states()
        for member in pool.members:
            verdict = verdicts.get((pool.id, member.address))
            if verdict is None or verdict.healthy:  # a pending member is not healthy
                return True
        return False

    async def check_each() -> None:
        confirmed = True
        for reconciler, admin in zip(reconcilers, admins, strict=True):
            confirmed &= await check_after_first_sync(
                reconciler.state, admin, membership.resolver, settings, serves
            )
        if not confirmed:
            await log_first_lookup(membership.resolver, settings)

    return asyncio.create_task(check_each())


def _observability(
    settings: Settings,
    reconcilers: list[Reconciler],
    membership: MembershipChannel | None,
    notifier: SystemdNotifier,
    traffic: TrafficBook,
    engines: EngineSet,
) -> Observability:
    """The state file, metrics and systemd notifications, watching every reconciler."""
    view = LiveView(
        reconcilers,
        settings=settings,
        health=membership,
        traffic=traffic,
        engines=engines.states if engines.several else None,
    )
    readers = []
    if settings.metrics_listen:  # scrapes and /healthz read Caddy with clients of their own
        readers = [CaddyAdmin(r.caddy.endpoint, timeout=PING_TIMEOUT * 2) for r in reconcilers]
    observability = Observability(
        view,
        state_file=state_file_path(settings),
        metrics_listen=settings.metrics_listen,
        readers=readers,
        notifier=notifier,
    )
    for reconciler in reconcilers:
        reconciler.observers.extend(observability.observers)
    return observability


def _reload_settings(
    current: Settings, reconcilers: list[Reconciler], static: StaticRoutes | None
) -> Settings:
    """The settings after a SIGHUP: the live ones re-read, the others as they were."""
    try:
        fresh = load_settings()
    except ConfigError as exc:
        logger.error(f"SIGHUP: settings not reloaded: {exc}")
        return current
    ignored = [
        name
        for name in type(fresh).model_fields
        if name not in LIVE_SETTINGS and getattr(fresh, name) != getattr(current, name)
    ]
    if ignored:
        logger.warning(f"SIGHUP: {', '.join(ignored)} change(s) need a restart; kept as they were")
    updates = {name: getattr(fresh, name) for name in LIVE_SETTINGS}
    merged = current.model_copy(update=updates)
    setup_logging(merged.log_level, merged.log_format)
    if static is not None:
        static.reload()
    for reconciler in reconcilers:
        reconciler.settings = merged
        reconciler.retry_refused()  # e.g. after an upgrade of Caddy
        reconciler.verify_next()
    logger.info("SIGHUP: settings and static file reloaded; resyncing")
    return merged


async def _leave_fallbacks(reconcilers: list[Reconciler]) -> None:
    """Before exiting, let Caddy's dynamic routes fall back to today's members.

    Bounded: SIGTERM must stop us within a second, and a Caddy that does not answer
    keeps the fallback of the last write, which still serves.
    """
    for reconciler in reconcilers:
        try:
            async with asyncio.timeout(0.6):
                await reconciler.refresh_fallbacks()
        except (TimeoutError, LabelsyncError) as exc:
            logger.warning(f"could not refresh Caddy's fallback members on exit: {exc}")


async def _start_dashboard(settings: Settings, view: LiveView, endpoint: str) -> Dashboard | None:
    """The web dashboard on LABELSYNC_DASHBOARD_LISTEN (docs/operations.md, "The dashboard"): an
    address the operator set must bind; the default one may be taken (a warning)."""
    if settings.dashboard_listen is None:
        return None
    from labelsync.app.status import live_report

    dashboard = Dashboard(lambda: live_report(view.settings, view.snapshot(), endpoint))
    required = "dashboard_listen" in settings.model_fields_set
    if await dashboard.start(settings.dashboard_listen, required=required):
        return dashboard
    return None


async def run_daemon(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT; the exit code."""
    # Taken (and unset) before the bundled Caddy starts: it would report to systemd too.
    notifier = SystemdNotifier.from_environment()
    # Before anything starts: a TLS directory without its files, or ssh:// without
    # paramiko, stops the start with one line (ConfigError). Nothing is contacted yet.
    engines = EngineSet(settings.engines, swarm=settings.swarm)
    stop = asyncio.Event()
    static = (
        SharedStatic(StaticFile(settings.static_file, settings.label_prefix))
        if settings.static_file
        else None
    )
    reconcilers: list[Reconciler] = []
    _handle_signals(settings, stop, reconcilers, static, notifier)

    def restore_routes() -> None:
        for reconciler in reconcilers:
            reconciler.verify_next()

    # The resolver binds first: Caddy's routes point at it, and a busy port should stop
    # us before anything else is started.
    async with (
        _membership(settings) as membership,
        caddy_endpoints(settings, restore_routes) as caddies,
    ):
        crashed = await _serve(
            settings, caddies, membership, static, engines, reconcilers, notifier, stop
        )
    if crashed is not None:
        logger.opt(exception=crashed).error("labelsync stopped on an unexpected error")
        return 1
    logger.info(caddies.stopped_message())
    return 0


def _handle_signals(
    settings: Settings,
    stop: asyncio.Event,
    reconcilers: list[Reconciler],
    static: SharedStatic | None,
    notifier: SystemdNotifier,
) -> None:
    """SIGTERM and SIGINT stop; SIGHUP reloads the settings (see `_reload_settings`)."""
    live = settings

    def reload() -> None:
        nonlocal live
        notifier.reloading()
        live = _reload_settings(live, reconcilers, static)
        if all(r.state.synced.is_set() for r in reconcilers):
            notifier.ready()  # else READY=1 comes after the first sync, as at any start

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)


def _traffic(
    settings: Settings, caddies: CaddyEndpoints
) -> tuple[TrafficBook, dict[str, TrafficSampler]]:
    """Caddy's request counters, read into one book by a sampler per Caddy
    (loop/traffic.py); none with LABELSYNC_CADDY_METRICS=off."""
    book = TrafficBook()
    bundled = caddies.bundled.admin_endpoint if caddies.bundled is not None else None
    samplers = {}
    for endpoint in caddies.endpoints:
        own = endpoint == bundled
        if settings.caddy_metrics == "off":
            state = MetricsState.NOT_READ
            book.set_counting(endpoint, CaddyCounting(state, how_to_count(state, bundled=own)))
            continue
        samplers[endpoint] = TrafficSampler(
            CaddyAdmin(endpoint, timeout=TRAFFIC_TIMEOUT),
            book,
            server=settings.caddy_server,
            turn_on=turns_metrics_on(settings.caddy_metrics, bundled=own),
            bundled=own,
        )
    return book, samplers


async def _serve(
    settings: Settings,
    caddies: CaddyEndpoints,
    membership: MembershipChannel | None,
    static: SharedStatic | None,
    engines: EngineSet,
    reconcilers: list[Reconciler],
    notifier: SystemdNotifier,
    stop: asyncio.Event,
) -> BaseException | None:
    """One reconciler per Caddy, with reporting around them, until `stop` is set or a
    reconciler crashes (its exception, returned); everything closed on the way out."""
    endpoints = caddies.endpoints
    admins = [CaddyAdmin(endpoint) for endpoint in endpoints]
    source = SharedSource(engines)
    traffic, samplers = _traffic(settings, caddies)
    for admin in admins:
        sampler = samplers.get(admin.endpoint)
        reconciler = Reconciler(
            settings,
            source,
            admin,
            static=static,
            membership=membership,
            before_write=sampler.before_write if sampler is not None else None,
            unlisted=engines.unlisted,
        )
        if sampler is not None:
            sampler.ready = reconciler.state.synced.is_set
        reconcilers.append(reconciler)
    _budget_follows_health(reconcilers, membership)
    logger.info(
        f"labelsync running: Caddy {', '.join(endpoints)}, Docker {source.endpoint}, "
        f"upstreams {settings.upstreams}"
    )
    observability = _observability(settings, reconcilers, membership, notifier, traffic, engines)
    dashboard = await _start_dashboard(settings, observability.view, endpoints[0])
    await observability.start()
    tasks = [asyncio.create_task(r.run()) for r in reconcilers]
    stopper = asyncio.create_task(stop.wait())
    counting = asyncio.create_task(sample_forever(list(samplers.values()), traffic))
    check = _reachability_check(reconcilers, admins, membership, settings)
    done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    extras = [stopper, counting] if check is None else [stopper, counting, check]
    for task in [*tasks, *extras]:
        task.cancel()
    await asyncio.gather(*tasks, *extras, return_exceptions=True)
    crashed = [t.exception() for t in done if t is not stopper and not t.cancelled()]
    await _leave_fallbacks(reconcilers)
    if dashboard is not None:
        await dashboard.aclose()
    await observability.aclose()
    for admin in admins:
        await admin.aclose()
    for sampler in samplers.values():
        await sampler.reader.aclose()
    source.close()
    return crashed[0] if crashed else None
