"""The console's HTTP server on 127.0.0.1: HTML pages rendered from `ConsoleData`, and their assets.

Pages refresh themselves while something runs: a page's live part carries an htmx trigger that fetches it
again after a few seconds, and the server stops adding that trigger once nothing runs or the page has
been watching for REFRESH_FOR seconds. Then the page says so, with the last status it saw.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from botocore.exceptions import BotoCoreError, ClientError
from jinja2 import Environment, FileSystemLoader, select_autoescape
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import make_server
from werkzeug.utils import redirect, send_from_directory
from werkzeug.wrappers import Request, Response

from sagalocal.console import data as console_data
from sagalocal.console.execution import details, expand, pretty

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
# Browser libraries, each a file of a package pinned in package-lock.json (installed by `make`: npm ci).
VENDOR = {
    "dagre.min.js": NODE_MODULES / "@dagrejs/dagre/dist/dagre.min.js",
    "htmx.min.js": NODE_MODULES / "htmx.org/dist/htmx.min.js",
}
REFRESH_RUNNING = 2.0  # seconds between refreshes while something runs: about 1 request/s per page
REFRESH_IDLE = 10.0  # the newest executions, while nothing runs, to show new ones
REFRESH_FOR = 600.0  # a page stops refreshing after this long; reloading it starts again


class AssetsMissing(RuntimeError):
    pass


def check_assets() -> None:
    missing = [str(path) for path in VENDOR.values() if not path.is_file()]
    if missing:
        raise AssetsMissing("the console's browser libraries are not installed (" + ", ".join(missing) + "): run "
                            "`make venv` or `cd sagalocal/console && npm ci`")


def _when(value: Any) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value / 1000 if value > 1e11 else value, tz=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _relative(epoch_ms: Any) -> str:
    """An epoch-milliseconds instant from now: 'in 12 s' or '3.0 min ago'."""
    if not isinstance(epoch_ms, (int, float)):
        return ""
    delta = epoch_ms / 1000 - time.time()
    return f"in {_duration(delta)}" if delta >= 0 else f"{_duration(-delta)} ago"


class Refresh:
    """Whether a page's live part fetches itself again, and what it says about it."""

    def __init__(self, request: Request, active: bool, every: float, what: str) -> None:
        try:
            self.since = float(request.args.get("since") or time.time())
        except ValueError:
            self.since = time.time()
        self.expired = time.time() - self.since > REFRESH_FOR
        self.active = active and not self.expired
        self.every = every
        self.what = what  # the last status seen, in words
        self.limit_minutes = int(REFRESH_FOR // 60)
        self.seen_at = datetime.now(tz=UTC).strftime("%H:%M:%S UTC")
        args = request.args.to_dict()
        args["since"] = f"{self.since:.3f}"
        self.url = request.path + "?" + urlencode(args)


class ConsoleApp:
    def __init__(self, data: console_data.ConsoleData) -> None:
        self.data = data
        self.jinja = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(),
                                 trim_blocks=True, lstrip_blocks=True)
        self.jinja.filters.update(when=_when, duration=_duration, relative=_relative,
                                  pretty=lambda value: pretty(expand(value)),
                                  arn_name=lambda arn: str(arn).rsplit(":", 1)[-1],
                                  # a lease owner: an execution's identity (<ARN>#<start time>) or reaper:<id>
                                  owner_name=lambda owner: str(owner).split("#")[0].rsplit(":", 1)[-1],
                                  event_details=lambda event: pretty(expand(details(event))))
        self.jinja.globals.update(outputs=data.outputs, endpoint=data.source.endpoint or "AWS",
                                  region=data.source.region, statuses=console_data.STATUSES)
        self.urls = Map([
            Rule("/", endpoint="home"),
            Rule("/state-machine", endpoint="state_machine"),
            Rule("/executions", endpoint="executions"),
            Rule("/executions/<path:name>", endpoint="execution"),
            Rule("/orders/<order_id>", endpoint="order"),
            Rule("/parked", endpoint="parked", methods=["GET", "POST"]),
            Rule("/parked/redrive", endpoint="redrive", methods=["POST"]),
            Rule("/dashboard", endpoint="dashboard"),
            Rule("/static/<path:name>", endpoint="static"),
            Rule("/vendor/<name>", endpoint="vendor"),
        ])

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        try:
            response = self.dispatch(request)
        except HTTPException as exc:
            response = self.render(request, "error.html", {"title": exc.name, "message": exc.description},
                                   status=exc.code or 500)
        except (ClientError, BotoCoreError) as exc:
            # An htmx refresh gets a 200 with the error, so the page shows it and keeps its last content.
            live = bool(request.headers.get("HX-Request"))
            refresh = Refresh(request, True, REFRESH_IDLE, "the endpoint answered with an error") if live else None
            response = self.render(request, "error.html", {"title": "The AWS endpoint answered with an error",
                                                            "message": str(exc), "refresh": refresh},
                                   status=200 if live else 502)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        host = request.host.rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            raise Forbidden("the console answers on 127.0.0.1 and localhost only")  # no DNS rebinding
        adapter = self.urls.bind_to_environ(request.environ)
        endpoint, args = adapter.match()
        return getattr(self, f"on_{endpoint}")(request, **args)

    def render(self, request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
        live = bool(request.headers.get("HX-Request"))
        html = self.jinja.get_template(template).render(request=request, live_only=live, **context)
        return Response(html, status=status, mimetype="text/html")

    # ---- pages ---------------------------------------------------------------------------------------
    def on_home(self, request: Request) -> Response:
        return redirect("/executions")

    def on_state_machine(self, request: Request) -> Response:
        described, graph = self.data.state_machine()
        return self.render(request, "state_machine.html", {"described": described, "graph": graph,
                                                           "title": "State machine"})

    def on_executions(self, request: Request) -> Response:
        status = request.args.get("status") or None
        if status is not None and status not in console_data.STATUSES:
            raise BadRequest(f"status must be one of {', '.join(console_data.STATUSES)}")
        try:
            size = int(request.args.get("size", 25))
        except ValueError:
            size = 0
        if not 1 <= size <= console_data.MAX_PAGE_SIZE:
            raise BadRequest(f"size must be a number from 1 to {console_data.MAX_PAGE_SIZE}")
        token = request.args.get("token") or None
        page = self.data.executions(status, size, token)
        first_page = token is None
        refresh = Refresh(request, page.running > 0 or first_page,
                          REFRESH_RUNNING if page.running else REFRESH_IDLE,
                          f"{page.running} running of {len(page.rows)} shown")
        return self.render(request, "executions.html", {"page": page, "refresh": refresh, "title": "Executions",
                                                        "first_page": first_page})

    def on_execution(self, request: Request, name: str) -> Response:
        try:
            view = self.data.execution(name)
        except console_data.NotFound as exc:
            raise NotFound(str(exc)) from exc
        status = view.described["status"]
        refresh = Refresh(request, status == "RUNNING", REFRESH_RUNNING,
                          f"{status}, in {view.reading.visits[-1].name if view.reading.visits else 'no state yet'}")
        return self.render(request, "execution.html", {"view": view, "refresh": refresh,
                                                       "title": f"Execution {view.described['name']}"})

    def on_order(self, request: Request, order_id: str) -> Response:
        view = self.data.order(order_id)
        if view.order is None and view.reservation is None and not view.payments:
            raise NotFound(f"no order {order_id} in {self.data.outputs.get('OrdersTableName')}")
        saga_status = (view.order or {}).get("saga_status", "unknown")
        refresh = Refresh(request, view.unfinished, REFRESH_RUNNING, f"saga {saga_status}")
        return self.render(request, "order.html", {"view": view, "refresh": refresh, "title": f"Order {order_id}"})

    def on_parked(self, request: Request, refused: console_data.NotRedrivable | None = None) -> Response:
        messages = None
        if request.method == "POST" and refused is None:
            # A read counts as a receive of every message on the queue: only this page's own form may ask.
            _same_origin(request, "messages are read from the console's own page only")
            messages = self.data.read_parked()
        return self.render(request, "parked.html", {"parked": self.data.parked_sagas(), "queues": self.data.queues(),
                                                    "messages": messages, "refused": refused,
                                                    "title": "Parked sagas"},
                           status=409 if refused is not None else 200)

    def on_redrive(self, request: Request) -> Response:
        """RedriveExecution of a parked saga's execution, then its page (which refreshes while it runs). A refusal
        (not redrivable, no such execution) is shown on the Parked page with Step Functions' reason."""
        _same_origin(request, "executions are redriven from the console's own page only")
        arn = request.form.get("execution_arn", "")
        try:
            count = int(request.form.get("redrive_count", "0"))
        except ValueError as exc:
            raise BadRequest("redrive_count must be a number") from exc
        try:
            self.data.redrive(arn, count)
        except console_data.NotRedrivable as refused:
            return self.on_parked(request, refused)
        return redirect("/executions/" + arn.rsplit(":", 1)[-1], code=303)

    def on_dashboard(self, request: Request) -> Response:
        dashboards, source = self.data.dashboards()
        breaker = self.data.breaker()
        refresh = Refresh(request, bool(dashboards) or breaker.state.state != console_data.CLOSED, REFRESH_IDLE,
                          f"the metrics so far, the breaker {breaker.state.state}")
        return self.render(request, "dashboard.html", {"dashboards": dashboards, "source": source, "breaker": breaker,
                                                       "refresh": refresh, "title": "Dashboard"})

    # ---- assets --------------------------------------------------------------------------------------
    def on_static(self, request: Request, name: str) -> Response:
        return send_from_directory(HERE / "static", name, request.environ, max_age=0)

    def on_vendor(self, request: Request, name: str) -> Response:
        path = VENDOR.get(name)
        if path is None or not path.is_file():
            raise NotFound(f"no asset {name}" if path is None else f"{path} is not installed: run `make venv`")
        return send_from_directory(path.parent, path.name, request.environ, max_age=3600)


def _same_origin(request: Request, why: str) -> None:
    """A POST that changes or receives something: from the console's own pages only (a browser sends
    Sec-Fetch-Site with every request; a page of another site that posts here gets 403)."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
        raise Forbidden(why)


class ConsoleServer:
    """The console on 127.0.0.1:`port` (0: a free port), served from a thread of this process."""

    def __init__(self, source: console_data.Source, port: int = 0) -> None:
        check_assets()
        self.app = ConsoleApp(console_data.ConsoleData(source))
        self._server = make_server("127.0.0.1", port, self.app, threaded=True)
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sagalocal-console", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConsoleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
