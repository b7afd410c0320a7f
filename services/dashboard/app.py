"""The dashboard's HTTP server (aiohttp): routes, the window an address names, token check.

aiohttp because the handlers await the services' grpc.aio stubs on the server's own event loop:
one process, one loop, no thread hand-offs and no ASGI server beside it.

Routes: ``/`` the overview of a window (``?last=1h|24h|7d|30d|all`` or ``?from=..&to=..``, UTC,
ISO 8601 or a datetime-local value; ``&buckets=N``), ``/requests/<request_id>`` the request
explorer (``/requests?request_id=..`` redirects there), ``/healthz`` 200 once profiles is
SERVING, else 503.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import logging
import ssl
from urllib.parse import quote

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from google.protobuf import timestamp_pb2

from longtail.profiles.v1 import profiles_service_pb2 as ppb
from services.dashboard import page
from services.dashboard.config import DashboardSettings
from services.dashboard.source import DashboardSource

log = logging.getLogger(__name__)

_LAST = {
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "30d": dt.timedelta(days=30),
}
_TOKEN_COOKIE = "longtail_dashboard_token"
SOURCE_KEY: web.AppKey[DashboardSource] = web.AppKey("source", DashboardSource)
SETTINGS_KEY: web.AppKey[DashboardSettings] = web.AppKey("settings", DashboardSettings)


class BadWindow(ValueError):
    """The address names a window that cannot be read."""


def _parse_time(text: str, field: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as error:
        raise BadWindow(f"{field}={text!r} is not a date and time (ISO 8601, UTC)") from error
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def window_of(query: dict[str, str], now: dt.datetime, default_hours: float) -> page.WindowView:
    """The window an address names (``last``, or ``from``/``to``), else the default one."""
    last = query.get("last", "")
    if last:
        if last == "all":
            return page.WindowView(None, now, "everything served")
        if last not in _LAST:
            raise BadWindow(f"last={last!r} is not one of {', '.join([*_LAST, 'all'])}")
        return page.WindowView(now - _LAST[last], now, f"the last {last}")
    start_text, end_text = query.get("from", ""), query.get("to", "")
    if start_text or end_text:
        end = _parse_time(end_text, "to") if end_text else now
        start = (
            _parse_time(start_text, "from")
            if start_text
            else end - dt.timedelta(hours=default_hours)
        )
        if not end > start:
            raise BadWindow("the window must end after it starts")
        return page.WindowView(start, end, "chosen")
    hours = default_hours
    return page.WindowView(now - dt.timedelta(hours=hours), now, f"the last {hours:g} h")


def _stamp(moment: dt.datetime) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(moment)
    return value


def _served_window(window: page.WindowView) -> ppb.ServedWindow:
    served = ppb.ServedWindow(end_time=_stamp(window.end))
    if window.start is not None:
        served.start_time.CopyFrom(_stamp(window.start))
    return served


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _failure(error: grpc.aio.AioRpcError, request_id: str | None = None) -> web.Response:
    """A page for a profiles refusal or outage (the HTTP status follows the gRPC code)."""
    code = error.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return _html(page.message_page("Bad request", error.details() or "", request_id), 400)
    if code == grpc.StatusCode.NOT_FOUND:
        return _html(page.message_page("Not found", error.details() or "", request_id), 404)
    log.warning("profiles failed: %s %s", code.name, error.details())
    return _html(
        page.message_page(
            "Profiles is unavailable",
            f"{code.name}: {error.details() or ''}. The page needs the profiles service.",
            request_id,
        ),
        503,
    )


async def overview(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    query = dict(request.query)
    try:
        window = window_of(query, dt.datetime.now(dt.UTC), settings.default_window_hours)
        buckets = int(query.get("buckets", settings.bucket_count))
    except (BadWindow, ValueError) as error:
        return _html(page.message_page("Bad window", str(error)), 400)
    try:
        data = await request.app[SOURCE_KEY].overview(_served_window(window), buckets)
    except grpc.aio.AioRpcError as error:
        return _failure(error)
    if window.start is None:  # "all": show where the log starts
        window = dataclasses.replace(
            window, start=data.summary.window.start_time.ToDatetime(tzinfo=dt.UTC)
        )
    return _html(page.overview_page(data, window))


async def find_request(request: web.Request) -> web.StreamResponse:
    request_id = request.query.get("request_id", "").strip()
    if not request_id:
        return _html(page.message_page("Bad request", "give a request_id", ""), 400)
    raise web.HTTPSeeOther(f"/requests/{quote(request_id, safe='')}")


async def show_request(request: web.Request) -> web.StreamResponse:
    request_id = request.match_info["request_id"]
    try:
        answer = await request.app[SOURCE_KEY].served_request(request_id)
    except grpc.aio.AioRpcError as error:
        return _failure(error, request_id)
    return _html(page.request_page(request_id, answer))


async def healthz(request: web.Request) -> web.StreamResponse:
    ready = await request.app[SOURCE_KEY].ready()
    return web.Response(
        text="ok" if ready else "profiles not serving", status=200 if ready else 503
    )


def _token_check(token: str) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz":
            return await handler(request)
        offered = request.query.get("token", "")
        if offered and hmac.compare_digest(offered, token):
            # Once through the address; a cookie from then on (the token leaves the address).
            response = web.HTTPSeeOther(request.path)
            response.set_cookie(_TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            raise response
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ") if header.startswith("Bearer ") else ""
        presented = presented or request.cookies.get(_TOKEN_COOKIE, "")
        if not hmac.compare_digest(presented, token):
            return web.Response(status=401, text="a token is needed: open /?token=<token>")
        return await handler(request)

    return check


def build_app(settings: DashboardSettings, source: DashboardSource) -> web.Application:
    middlewares = [_token_check(settings.auth_token)] if settings.auth_token else []
    app = web.Application(middlewares=middlewares)
    app[SETTINGS_KEY] = settings
    app[SOURCE_KEY] = source
    app.router.add_get("/", overview)
    app.router.add_get("/requests", find_request)
    app.router.add_get("/requests/{request_id}", show_request)
    app.router.add_get("/healthz", healthz)

    async def close(_: web.Application) -> None:
        await source.close()

    app.on_cleanup.append(close)
    return app


@dataclasses.dataclass
class RunningDashboard:
    runner: web.AppRunner
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve(settings: DashboardSettings) -> RunningDashboard:
    """Serve on ``settings.host:port`` (0 = a free one); HTTPS with a certificate."""
    app = build_app(settings, DashboardSource(settings))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=context)
    await site.start()
    server = site._server  # the bound port when asked for 0
    assert server is not None
    port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    return RunningDashboard(runner, settings.host, port, "https" if context else "http")
