"""The aiohttp application: routes, error shapes, wiring of ComfyUI client, fetcher, webhooks and lifecycle.

Wiring of the cache and outbound requests:
- one `Egress` (every outbound request: downloads, uploads, webhooks) per app, closed at cleanup;
- `build_fetcher(settings, egress)` returns the model cache; the app registers its `POST /download`
  (`cache.routes`) and runs its manifest (`cache.manifest.ManifestPreload`) as the fetcher's preload;
- another fetcher may offer `routes()` and `start()` / `close()`; `create_app` registers / awaits them.
  Handlers reach the fetcher with `request.app[FETCHER_KEY]`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import aiohttp
import yaml
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from comfyui_sidecar import auth, request_body
from comfyui_sidecar.cache import ModelCache
from comfyui_sidecar.cache.manifest import ManifestPreload
from comfyui_sidecar.cache.routes import download_routes
from comfyui_sidecar.comfy_client import IGNORABLE_EVENTS, ComfyError, ComfyRejected
from comfyui_sidecar.comfy_pool import ComfyPool, build_pool
from comfyui_sidecar.convert import ImageTooLarge
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.fetching import Fetcher
from comfyui_sidecar.jobs import JobStore
from comfyui_sidecar.lifecycle import Lifecycle, State
from comfyui_sidecar.local_routes import LOCAL_KEY, LocalContext
from comfyui_sidecar.local_routes import routes as local_routes
from comfyui_sidecar.metrics import Metrics
from comfyui_sidecar.models import (
    VERSION,
    ErrorResponse,
    HealthResponse,
    InterruptRequest,
    InterruptResponse,
    PromptRequest,
    PromptResponse,
    ReadyResponse,
    ServerError,
)
from comfyui_sidecar.openapi import Operation, build_openapi, docs_page, documented
from comfyui_sidecar.prompt_flow import PrepareError, PromptService, echo, is_async
from comfyui_sidecar.request_body import BODY_LIMITS_KEY, ClientAborted
from comfyui_sidecar.responses import (
    bad_request,
    fastify_error_plain,
    files_json_response,
    json_response,
    read_json,
    read_object,
    server_error,
    validate,
)
from comfyui_sidecar.settings import Settings
from comfyui_sidecar.system_events import SystemEvents, metadata_from, parse_events
from comfyui_sidecar.uploads import Uploader, UploadError
from comfyui_sidecar.v2 import wiring
from comfyui_sidecar.v2.context import V2_KEY
from comfyui_sidecar.webhooks import RetryPolicy, WebhookSender

SETTINGS_KEY = web.AppKey("settings", Settings)
FETCHER_KEY = web.AppKey("fetcher", Fetcher)
SERVICE_KEY = web.AppKey("service", PromptService)
COMFY_KEY = web.AppKey("comfy", ComfyPool)
STATE_KEY = web.AppKey("state", State)
METRICS_KEY = web.AppKey("metrics", Metrics)
LIFECYCLE_KEY = web.AppKey("lifecycle", Lifecycle)
WEBHOOKS_KEY = web.AppKey("webhooks", WebhookSender)
STOP_KEY = web.AppKey("stop", asyncio.Event)
SYSTEM_EVENTS_KEY = web.AppKey("system_events", SystemEvents)
EGRESS_KEY = web.AppKey("egress", Egress)
UPLOADER_KEY = web.AppKey("uploader", Uploader)
JOBS_KEY = web.AppKey("jobs", JobStore)

log = logging.getLogger(__name__)
COMFYUI_STATE = {
    "type": "object",
    "properties": {"version": {"type": "string"}, "comfyui": {"type": "string"}},
}
MODELS_MAP = {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}


@runtime_checkable
class ServesRoutes(Protocol):
    def routes(self) -> Sequence[web.AbstractRouteDef]: ...


@runtime_checkable
class HasLifecycle(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class Preloads(Protocol):
    """A fetcher with start-up downloads (the manifest's `before_start` models). The app runs `preload` in the
    background after `start`, so the sidecar answers /health at once; /ready waits for it."""

    async def preload(self) -> None: ...


def build_egress(settings: Settings) -> Egress:
    """The outbound clients; ComfyUI's address and the sidecar's own port are never reachable through them."""
    return Egress(settings, comfy_url=settings.comfy_url, own_port=settings.port)


def build_fetcher(settings: Settings, egress: Egress | None = None) -> Fetcher:
    """The fetcher for URL inputs and models: the model and media cache (docs/cache.md). Without `egress` (the
    app's), the cache gets one of its own and closes it."""
    return ModelCache(
        settings,
        input_dir=settings.input_dir,
        model_dir=settings.model_dir,
        egress=egress or build_egress(settings),
        close_egress=egress is None,
    )


# ---- handlers --------------------------------------------------------------------------------
@documented(
    Operation("Liveness", {200: (HealthResponse, "alive"), 500: (HealthResponse, "warmup failed for good")})
)
async def health(request: web.Request) -> web.Response:
    healthy = request.app[STATE_KEY].healthy
    return json_response(
        {"version": VERSION, "status": "healthy" if healthy else "not healthy"}, 200 if healthy else 500
    )


def queue_depth(app: web.Application) -> int:
    """Accepted unfinished prompts and jobs of this pod (or its ComfyUIs' own count, when higher)."""
    return max(app[JOBS_KEY].active_count(), app[COMFY_KEY].queue_remaining)


def queue_full(app: web.Application) -> bool:
    limit = app[SETTINGS_KEY].max_queue_depth
    return limit > 0 and queue_depth(app) >= limit


def is_ready(app: web.Application) -> bool:
    ready = app[STATE_KEY].ready(app[SETTINGS_KEY].max_queue_depth, queue_depth(app))
    app[METRICS_KEY].ready.set(1 if ready else 0)
    return ready


@documented(
    Operation(
        "Readiness (warm, ComfyUI connected, queue below MAX_QUEUE_DEPTH)",
        {200: (ReadyResponse, "ready"), 503: (ReadyResponse, "not ready")},
    )
)
async def ready(request: web.Request) -> web.Response:
    ok = is_ready(request.app)
    return json_response({"version": VERSION, "status": "ready" if ok else "not ready"}, 200 if ok else 503)


@documented(
    Operation(
        "Whether ComfyUI answers now (the probes of the ComfyUI container)",
        {200: (COMFYUI_STATE, "ComfyUI answers"), 503: (COMFYUI_STATE, "ComfyUI does not answer")},
    )
)
async def comfyui_health(request: web.Request) -> web.Response:
    """Whether ComfyUI answers now (every local ComfyUI, when there are several): the pod's startup and
    liveness probes of the ComfyUI container, which listens on loopback only and can not be probed by the
    kubelet directly."""
    app = request.app
    up = await app[COMFY_KEY].ping_all(app[SETTINGS_KEY].comfyui_probe_timeout_s)
    return json_response({"version": VERSION, "comfyui": "up" if up else "down"}, 200 if up else 503)


@documented(
    Operation(
        "The ComfyUI container's preStop hook: stop taking prompts, wait for the running ones",
        {
            200: (
                {"type": "object", "properties": {"drained": {"type": "boolean"}}},
                "drained (or grace over)",
            )
        },
    )
)
async def drain_route(request: web.Request) -> web.Response:
    """The ComfyUI container's preStop hook (the kubelet's hooks can only GET): see `prestop_drain`."""
    drained = await prestop_drain(request.app)
    return json_response({"version": VERSION, "drained": drained})


@documented(
    Operation(
        "Model files per ComfyUI model folder",
        {200: (MODELS_MAP, "folder -> file names"), 502: (ServerError, "ComfyUI did not answer")},
    )
)
async def models(request: web.Request) -> web.Response:
    try:
        result = await request.app[COMFY_KEY].models()
    except (aiohttp.ClientError, ValueError, TimeoutError) as error:
        return server_error(502, f"Could not list models from ComfyUI: {type(error).__name__}")
    return json_response(result)


@documented(
    Operation(
        "Run a ComfyUI prompt",
        {
            200: (PromptResponse, "finished (synchronous)"),
            202: (PromptResponse, "accepted; results go to the webhook / upload"),
            400: (ErrorResponse, "invalid request, JSON or prompt"),
            408: (ServerError, "the body did not arrive in time"),
            409: (
                ErrorResponse,
                "a prompt with this id is running, or finished and ComfyUI served it from cache",
            ),
            413: (ServerError, "body larger than MAX_BODY_SIZE_MB or with more than MAX_JSON_VALUES values"),
            415: (
                ServerError,
                "content type is not application/json, charset or Content-Encoding unsupported",
            ),
            422: (ErrorResponse, "convert_output: an image is larger than CONVERT_MAX_PIXELS"),
            429: (ErrorResponse, "queue full (MAX_QUEUE_DEPTH); Retry-After says when to retry"),
            500: (ServerError, "ComfyUI failed to run the prompt (comfy_error has details)"),
            502: (ServerError, "ComfyUI unreachable or lost the prompt, or an upload failed"),
            503: (ServerError, "shutting down"),
            504: (ServerError, "PROMPT_TIMEOUT_S exceeded"),
        },
        request=PromptRequest,
    )
)
async def prompt(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    app = request.app
    data = await read_object(request)
    if isinstance(data, web.Response):
        return data
    nodes, limit = data.get("prompt"), app[SETTINGS_KEY].max_prompt_nodes
    if isinstance(nodes, dict) and len(nodes) > limit:
        return bad_request(
            f"Bad Request: prompt has {len(nodes)} nodes (at most {limit}, MAX_PROMPT_NODES)", "prompt"
        )
    parsed = validate(data, PromptRequest)
    if isinstance(parsed, web.Response):
        return parsed
    if app[STATE_KEY].stopping:
        return server_error(503, "The sidecar is shutting down and takes no new prompts")
    if queue_full(app):
        retry = app[SETTINGS_KEY].retry_after_s
        response = json_response({"error": f"The queue is full (MAX_QUEUE_DEPTH); retry in {retry} s"}, 429)
        response.headers["Retry-After"] = str(retry)
        return response
    service = app[SERVICE_KEY]
    try:
        prepared = await service.prepare(parsed, started)
    except PrepareError as error:
        if error.status == 409:
            return json_response({"error": error.message, "location": error.location}, 409)
        if error.status == 400:
            return bad_request(error.message, error.location)
        return server_error(error.status, error.message)
    body = echo(parsed, prepared.prompt)
    if is_async(parsed):
        service.run_in_background(prepared)
        body["status"] = "ok"
        return json_response(body, 202)
    try:
        delivered = await service.run(prepared)
    except ComfyRejected as error:
        return bad_request(error.message, "prompt", node_errors=_node_errors(error.body))
    except ComfyError as error:
        if error.status == 409:
            return json_response({"error": error.message, "location": "id"}, 409)
        return server_error(error.status, error.message, error.comfy_error)
    except UploadError as error:
        return server_error(502, f"Upload failed: {error}")
    except ImageTooLarge as error:
        return json_response({"error": str(error), "location": "convert_output"}, 422)
    body.update(images=delivered.images, filenames=delivered.filenames, stats=delivered.stats)
    return await files_json_response(request, body, 200)


def _node_errors(body: Any) -> Any:
    return body.get("node_errors", {}) if isinstance(body, dict) else {}


@documented(
    Operation(
        "Interrupt a running prompt by request id",
        {
            200: (InterruptResponse, "interrupted"),
            400: (ErrorResponse, "invalid request or JSON"),
            404: (InterruptResponse, "unknown or finished id"),
            408: (ServerError, "the body did not arrive in time"),
            413: (ServerError, "body too large"),
            415: (
                ServerError,
                "content type is not application/json, charset or Content-Encoding unsupported",
            ),
        },
        request=InterruptRequest,
    )
)
async def interrupt(request: web.Request) -> web.Response:
    parsed = await read_json(request, InterruptRequest)
    if isinstance(parsed, web.Response):
        return parsed
    done = await request.app[SERVICE_KEY].interrupt(parsed.id)
    return json_response(
        {"id": parsed.id, "interrupted": "success" if done else "failed"}, 200 if done else 404
    )


def _document(request: web.Request) -> dict[str, Any]:
    return build_openapi(request.app, request.app[SETTINGS_KEY].port)


@documented(Operation("This OpenAPI document (JSON)", {200: ({"type": "object"}, "OpenAPI 3")}))
async def docs_json(request: web.Request) -> web.Response:
    return json_response(_document(request))


@documented(
    Operation("This OpenAPI document (YAML)", {200: (None, "OpenAPI 3")}, content_type="application/yaml")
)
async def docs_yaml(request: web.Request) -> web.Response:
    text = yaml.safe_dump(_document(request), sort_keys=False)
    return web.Response(text=text, content_type="application/yaml")


@documented(Operation("The endpoints as an HTML page", {200: (None, "HTML")}, content_type="text/html"))
async def docs_html(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(_document(request)), content_type="text/html")


@documented(
    Operation("Prometheus metrics", {200: (None, "text exposition format")}, content_type="text/plain")
)
async def metrics(request: web.Request) -> web.Response:
    is_ready(request.app)
    if V2_KEY in request.app:
        wiring.update_gauges(request.app[V2_KEY])
    # The app's own registry, then the process-wide one (cache metrics, process_* and python_* collectors).
    data = generate_latest(request.app[METRICS_KEY].registry) + generate_latest(REGISTRY)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLIENT_CLOSED_REQUEST = 499
"""nginx's status for a request the client abandoned; only logs and metrics ever show it."""


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count requests by route and code; answer unknown routes and methods in Fastify's shape."""
    app_metrics = request.app[METRICS_KEY]
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = fastify_error_plain(404, f"Route {request.method}:{request.path} not found")
    except web.HTTPMethodNotAllowed as error:
        response = fastify_error_plain(405, f"Method {request.method} not allowed on {request.path}")
        response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))
    except web.HTTPException:
        raise
    except ClientAborted:
        log.info("client closed the connection during %s %s (499)", request.method, request.path)
        response = web.Response(status=CLIENT_CLOSED_REQUEST)
    except Exception as error:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = server_error(500, f"Internal error: {type(error).__name__}")
    route = request.match_info.route.resource if request.match_info.route else None
    label = app_metrics.route_label(request.path, route.canonical if route is not None else None)
    app_metrics.requests.labels(route=label, code=str(response.status)).inc()
    if request.app[STATE_KEY].draining:
        # Keep-alive connections would keep reaching this pod after it left the Service.
        response.force_close()
    return response


class QuietBadRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a NUL in a header, a broken request line) with 400 itself
    and logs it as an ERROR with a traceback; that is the client's mistake: one info line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args, record.exc_info = f"bad request: {error.message}".strip(), None, None
        return record.levelno >= logging.getLogger("aiohttp.server").getEffectiveLevel()


# ---- assembly --------------------------------------------------------------------------------
def body_limits(settings: Settings) -> request_body.BodyLimits:
    return request_body.BodyLimits(
        max_bytes=settings.max_body_bytes,
        idle_timeout_s=settings.body_read_timeout_s,
        total_timeout_s=settings.body_total_timeout_s,
        max_values=settings.max_json_values,
    )


def make_runner(app: web.Application, **options: Any) -> web.AppRunner:
    """The AppRunner serving `app`: idle keep-alive connections, and requests whose headers do not arrive,
    are closed after HTTP_IDLE_TIMEOUT_S; request bodies are decompressed by `request_body`, not aiohttp."""
    return web.AppRunner(
        app, keepalive_timeout=app[SETTINGS_KEY].http_idle_timeout_s, auto_decompress=False, **options
    )


def create_app(
    settings: Settings, *, fetcher: Fetcher | None = None, start_lifecycle: bool = True
) -> web.Application:
    """The sidecar application. `fetcher` defaults to `build_fetcher(settings)`."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[observe, auth.middleware(settings.token(), settings.api_token_scope), wiring.envelope],
    )
    app[SETTINGS_KEY] = settings
    app[BODY_LIMITS_KEY] = body_limits(settings)
    app[EGRESS_KEY] = build_egress(settings)
    app[FETCHER_KEY] = fetcher if fetcher is not None else build_fetcher(settings, app[EGRESS_KEY])
    app[JOBS_KEY] = JobStore(retention_s=settings.job_retention_s, max_jobs=settings.max_retained_jobs)
    app[STATE_KEY] = State()
    app[METRICS_KEY] = Metrics()
    app[STOP_KEY] = asyncio.Event()
    app[_BACKGROUND] = set()
    app.add_routes(
        [
            web.get("/health", health),
            web.get("/health/comfyui", comfyui_health),
            web.get("/ready", ready),
            web.get("/drain", drain_route),
            web.get("/models", models),
            web.post("/prompt", prompt),
            web.post("/interrupt", interrupt),
            web.get("/docs", docs_html),
            web.get("/docs/json", docs_json),
            web.get("/docs/yaml", docs_yaml),
            web.get("/metrics", metrics),
            *local_routes(),
            *wiring.routes(),
        ]
    )
    chosen = app[FETCHER_KEY]
    if isinstance(chosen, ModelCache):
        app.add_routes(download_routes(chosen))
    elif isinstance(chosen, ServesRoutes):
        app.add_routes(chosen.routes())

    async def on_startup(app: web.Application) -> None:
        await _startup(app, start_lifecycle)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(_cleanup)
    return app


_SESSIONS = web.AppKey("sessions", list)
_BACKGROUND = web.AppKey("background", set)
DRAIN_RESET_S = 120


async def _startup(app: web.Application, start_lifecycle: bool) -> None:
    settings = app[SETTINGS_KEY]
    app_metrics = app[METRICS_KEY]
    state = app[STATE_KEY]
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    comfy_session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, connect=10)
    )
    app[_SESSIONS] = [comfy_session]
    egress = app[EGRESS_KEY]
    await egress.start()
    comfy = build_pool(settings, comfy_session, app_metrics)
    app[COMFY_KEY] = comfy
    policy = RetryPolicy(
        attempts=settings.prompt_webhook_retries,
        backoff_s=settings.webhook_backoff_s,
        backoff_max_s=settings.webhook_backoff_max_s,
        timeout_s=settings.webhook_timeout_s,
    )
    webhooks = WebhookSender(
        egress.webhook,
        policy,
        settings.webhook_key(),
        on_result=lambda outcome: app_metrics.webhooks.labels(outcome=outcome).inc(),
    )
    app[WEBHOOKS_KEY] = webhooks
    app[UPLOADER_KEY] = Uploader(egress, settings)
    service = PromptService(
        settings,
        comfy,
        app[FETCHER_KEY],
        webhooks,
        app_metrics,
        uploader=app[UPLOADER_KEY],
        jobs=app[JOBS_KEY],
    )
    app[SERVICE_KEY] = service
    await wiring.start(
        app,
        settings=settings,
        comfy=comfy,
        store=app[JOBS_KEY],
        metrics=app_metrics,
        queue_full=lambda: queue_full(app),
        draining=lambda: state.stopping,
    )
    if settings.system_webhook_url:
        events = parse_events(settings.system_webhook_events)
        system = SystemEvents(
            settings.system_webhook_url,
            events,
            metadata_from(os.environ),
            webhooks,
            service.api_id_for,
            max_pending=settings.system_webhook_queue_max,
            on_drop=app_metrics.system_webhooks_dropped.inc,
        )
        app[SYSTEM_EVENTS_KEY] = system
        comfy.set_on_event(system.on_comfy_event)
        comfy.set_skipped_prefixes(
            tuple(f'{{"type": "{name}"' for name in IGNORABLE_EVENTS if name not in events)
        )
    stop = app[STOP_KEY]

    def fatal(code: int) -> None:
        state.healthy = False
        state.exit_code = code
        stop.set()

    lifecycle = Lifecycle(
        settings=settings,
        comfy=comfy,
        service=service,
        metrics=app_metrics,
        state=state,
        fetch=app[EGRESS_KEY].download,
        on_fatal=fatal,
    )
    app[LIFECYCLE_KEY] = lifecycle
    fetcher = app[FETCHER_KEY]
    app[LOCAL_KEY] = LocalContext(
        settings=settings,
        pool=comfy,
        state=state,
        is_ready=lambda: is_ready(app),
        queue_depth=lambda: queue_depth(app),
        cached_models=fetcher.cached_models if isinstance(fetcher, ModelCache) else list,
        drain_pod=lambda: prestop_drain(app),
    )
    preloads: Preloads | None = fetcher if isinstance(fetcher, Preloads) else None
    if isinstance(fetcher, ModelCache):
        preloads = ManifestPreload.load(fetcher, settings)  # a bad manifest stops the start here
    if isinstance(fetcher, HasLifecycle):
        await fetcher.start()
    if preloads is not None:
        state.models_ready = False
        app[_BACKGROUND].add(asyncio.get_running_loop().create_task(_preload(preloads, state, lifecycle)))
    else:
        lifecycle.models_present.set()
    if start_lifecycle:
        await lifecycle.start()


async def _preload(fetcher: Preloads, state: State, lifecycle: Lifecycle) -> None:
    """Start-up downloads in the background: /health answers meanwhile, /ready waits for them (and, in
    supervise mode, so does ComfyUI's start)."""
    try:
        await fetcher.preload()
    finally:
        state.models_ready = True
        lifecycle.models_present.set()


async def prestop_drain(app: web.Application) -> bool:
    """The pod is being removed (GET /drain from the ComfyUI container's preStop hook). /ready turns 503 at
    once, prompts are still accepted for `drain_delay_s` while the Service stops routing here, then this waits
    (bounded) until every accepted prompt has finished; ComfyUI is stopped after this returns. True if all
    finished. If the pod is not stopped after all (a stray call), readiness comes back after DRAIN_RESET_S."""
    settings = app[SETTINGS_KEY]
    state = app[STATE_KEY]
    state.draining = True
    log.info("drain: /ready is 503; taking prompts for %.0f s more, then waiting", settings.drain_delay_s)
    await asyncio.sleep(settings.drain_delay_s)
    deadline = time.monotonic() + settings.shutdown_grace_period_s
    finished = await app[SERVICE_KEY].wait_idle(settings.shutdown_grace_period_s)
    finished = await app[JOBS_KEY].wait_idle(max(0.0, deadline - time.monotonic())) and finished  # v2 jobs
    await wiring.linger_for_downloads(app[JOBS_KEY], deadline)
    if not finished:
        log.warning("drain: prompts still running after %.0f s", settings.shutdown_grace_period_s)

    async def reset() -> None:
        await asyncio.sleep(DRAIN_RESET_S)
        if not state.stopping and state.draining:
            log.warning("drain: the pod was not stopped within %d s; taking prompts again", DRAIN_RESET_S)
            state.draining = False

    app[_BACKGROUND].add(asyncio.get_running_loop().create_task(reset()))
    return finished


async def drain(app: web.Application, grace_s: float) -> bool:
    """SIGTERM: stop taking prompts; wait (bounded) for in-flight ones and their webhooks. True if all
    finished."""
    state = app[STATE_KEY]
    state.draining = True
    state.stopping = True
    deadline = time.monotonic() + grace_s
    finished = await app[SERVICE_KEY].wait_idle(grace_s)
    jobs_done = await app[JOBS_KEY].wait_idle(max(0.0, deadline - time.monotonic()))  # v2 jobs too
    finished = finished and jobs_done
    await app[WEBHOOKS_KEY].drain(max(0.0, deadline - time.monotonic()))
    return finished


async def _cleanup(app: web.Application) -> None:
    await wiring.stop(app)
    background = app[_BACKGROUND]
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    if LIFECYCLE_KEY in app:
        await app[LIFECYCLE_KEY].stop()
    fetcher = app[FETCHER_KEY]
    if isinstance(fetcher, HasLifecycle):
        await fetcher.close()
    for session in app.get(_SESSIONS, []):
        await session.close()
    if UPLOADER_KEY in app:
        await app[UPLOADER_KEY].close()
    await app[EGRESS_KEY].close()
