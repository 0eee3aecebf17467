"""HTTP routes of the fake, mirroring ComfyUI 0.3.64's server.py (each also under /api)."""

from __future__ import annotations

import asyncio
import ipaddress
import mimetypes
import posixpath
import time
import uuid
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlparse, urlsplit

from aiohttp import web

from . import multipart
from .costs import cost_of, is_costed, route_key
from .files import KINDS, PathError, annotated, clean_subfolder
from .hub import SERVER_FEATURES
from .knobs import CostedSection, Upload
from .validation import NO_PROMPT, validate_prompt

if TYPE_CHECKING:
    from .instance import Instance

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MODEL_FOLDERS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models",
                 "clip_vision", "style_models", "embeddings", "diffusers", "vae_approx",
                 "controlnet", "gligen", "upscale_models", "custom_nodes", "hypernetworks",
                 "photomaker", "classifiers", "model_patches", "audio_encoders"]
RAM = {"total": 25276510208, "free": 24057278464}  # the recording machine's numbers
# asyncio's timers wake on whole milliseconds on Linux (epoll_wait; selectors rounds the wait
# up), so a sleep of x lasts x to x + 1 ms: a costed section asks for half a tick less, which
# makes it last its cost on average instead of half a millisecond more.
TIMER_TICK = 0.001
UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                "text/css"}


def model_files(instance: "Instance") -> dict[str, tuple[str, ...]]:
    """Every model folder with its files: MODEL_FOLDERS empty but for checkpoints (the
    instance's CheckpointLoaderSimple choices), then the `models` knob's folders over them
    (a folder not in MODEL_FOLDERS is one a custom node pack registered)."""
    files = {folder: () for folder in MODEL_FOLDERS}
    files["checkpoints"] = instance.catalogue.checkpoints
    files.update(instance.knobs.models)
    return files


def system_stats(port: int) -> dict:
    """GET /system_stats in the recorded shape (a CPU device, as on the recording host)."""
    argv = ["main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--disable-auto-launch", "--preview-method", "none"]
    return {
        "system": {"os": "posix", "ram_total": RAM["total"], "ram_free": RAM["free"],
                   "comfyui_version": "0.3.64", "required_frontend_version": "1.27.10",
                   "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95",
                   "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
                   "pytorch_version": "2.13.0+cpu", "embedded_python": False, "argv": argv},
        "devices": [{"name": "cpu", "type": "cpu", "index": None,
                     "vram_total": RAM["total"], "vram_free": RAM["free"],
                     "torch_vram_total": RAM["total"], "torch_vram_free": RAM["free"]}],
    }


def _is_loopback(host: str | None) -> bool:
    """Whether a Host header names this machine."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _origin_mismatch(host: str, origin: str) -> bool:
    """ComfyUI's origin_only_middleware test (ports compared only when both carry one)."""
    try:
        host_domain, parsed = host.lower(), urlparse(origin)
        origin_domain, host_parsed = parsed.netloc.lower(), urlsplit("//" + host.lower())
        if parsed.port is None:
            host_domain = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
    except ValueError:
        return False
    return bool(_is_loopback(host_parsed.hostname) and host_domain and origin_domain
                and host_domain != origin_domain)


@web.middleware
async def origin_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A browser-style Origin that does not match Host gets a bare 403, as in ComfyUI."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin and _origin_mismatch(host, origin):
        return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def observer(instance: "Instance") -> Callable:
    """Middleware logging every request, waiting out http_delay, then charging its cost."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Log on arrival (before the delay), so tests see requests still being answered."""
        body = await request.read() if request.body_exists else b""
        instance.recorder.add_request(request.method, request.path, request.query_string,
                                      body, dict(request.headers))
        await _delay(instance)
        costs = instance.knobs.costs
        if not is_costed(costs, request.method, request.path):
            return await handler(request)  # costs None: exactly the uncosted fake, no lock
        return await _costed(instance, costs, request, handler)

    return observe


async def _costed(instance: "Instance", costs: dict[str, float], request: web.Request,
                  handler: Handler) -> web.StreamResponse:
    """Run the handler, then wait out the route's recorded cost, both under the instance's lock.

    Real ComfyUI handles HTTP on one event loop, so a client sees the recorded latency and
    one instance answers at most 1/cost requests per second. The cost is an asyncio.sleep,
    not CPU burnt: the bench runs the fakes on the same 2 cores as Cylindria, while on a
    real host each ComfyUI has cores of its own. It is charged after the handler because
    POST /prompt's cost depends on its answer (a refused prompt costs less), and the sleep
    ends `cost` after the section was entered: the recorded time already includes the
    server's own work, so the fake's handler time is not added on top of it.
    """
    async with instance.http_lock:
        entered = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            await _charge(instance, costs, request, exc.status, entered)
            raise
        await _charge(instance, costs, request, response.status, entered)
        return response


async def _charge(instance: "Instance", costs: dict[str, float], request: web.Request,
                  status: int, entered: float) -> None:
    """Sleep until `cost` after `entered` (to within a timer tick) and note the section; a
    cancelled handler pays nothing."""
    cost = cost_of(costs, request.method, request.path, status)
    left = cost - (time.perf_counter() - entered) - TIMER_TICK / 2
    if left > 0:
        await asyncio.sleep(left)
    instance.recorder.add_section(CostedSection(
        route_key(request.method, request.path, status), cost, entered, time.perf_counter()))


async def _delay(instance: "Instance") -> None:
    """Sleep http_delay seconds, re-reading it so a test can cut a long delay short."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while (left := instance.knobs.http_delay - (loop.time() - start)) > 0:
        await asyncio.sleep(min(left, 0.02))


class Routes:
    """The handlers; thin, the logic lives in the queue, validation and executor."""

    def __init__(self, instance: "Instance") -> None:
        self.inst = instance

    def table(self) -> list[web.RouteDef]:
        """Every route ComfyUI serves that the fake implements."""
        return [
            web.get("/ws", self.inst.hub.handle), web.get("/", self.root),
            web.get("/prompt", self.get_prompt), web.post("/prompt", self.post_prompt),
            web.get("/queue", self.get_queue), web.post("/queue", self.post_queue),
            web.get("/history", self.get_history), web.post("/history", self.post_history),
            web.get("/history/{prompt_id}", self.get_history_item),
            web.post("/interrupt", self.interrupt), web.post("/free", self.free),
            web.get("/system_stats", self.system_stats), web.get("/features", self.features),
            web.get("/object_info", self.object_info),
            web.get("/object_info/{node_class}", self.object_info_node),
            web.get("/embeddings", self.embeddings), web.get("/models", self.models),
            web.get("/models/{folder}", self.models_in),
            web.get("/extensions", self.extensions),
            web.get("/view", self.view), web.post("/upload/image", self.upload_image),
        ]

    async def root(self, request: web.Request) -> web.Response:
        """The frontend's index page, reduced to a stub."""
        return web.Response(text="<!doctype html><title>ComfyUI (fake)</title>",
                            content_type="text/html")

    async def get_prompt(self, request: web.Request) -> web.Response:
        """GET /prompt: exec_info only."""
        return web.json_response(self.inst.hub.status_data()["status"])

    def _number(self, body: dict) -> Any:
        """The queue number: given (as float), or the global counter, negated for front."""
        if "number" in body:
            return float(body["number"])
        number = self.inst.number
        if body.get("front"):
            number = -number
        self.inst.number += 1
        return number

    def _prompt_id(self, body: dict) -> str:
        """A caller's prompt_id verbatim (as str, like ComfyUI), unless emulating old ComfyUI."""
        if self.inst.knobs.ignore_prompt_id:
            return str(uuid.uuid4())
        return str(body.get("prompt_id", uuid.uuid4()))

    @staticmethod
    def _extra_data(body: dict) -> dict:
        """extra_data plus client_id, without the keys ComfyUI keeps out of the queue."""
        extra = body.get("extra_data", {})
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        return {k: v for k, v in extra.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}

    async def post_prompt(self, request: web.Request) -> web.Response:
        """POST /prompt: number first (even for refusals), then validation, then enqueue."""
        body = await request.json()
        number = self._number(body)
        if "prompt" not in body:
            return web.json_response({"error": dict(NO_PROMPT), "node_errors": {}}, status=400)
        prompt_id = self._prompt_id(body)
        ok, error, outputs, node_errors = validate_prompt(
            body["prompt"], self.inst.catalogue.nodes, body.get("partial_execution_targets"))
        extra = self._extra_data(body)
        if not ok:
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        self.inst.queue.put([number, prompt_id, body["prompt"], extra, outputs])
        self.inst.executor.wake.set()
        self.inst.recorder.add_prompt(prompt_id)
        return web.json_response({"prompt_id": prompt_id, "number": number,
                                  "node_errors": node_errors})

    async def get_queue(self, request: web.Request) -> web.Response:
        """GET /queue."""
        running, pending = self.inst.queue.snapshot()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def post_queue(self, request: web.Request) -> web.Response:
        """POST /queue {"clear": true} / {"delete": [ids]}: pending items only."""
        body = await request.json()
        if "clear" in body and body["clear"]:
            self.inst.queue.wipe()
        for prompt_id in body.get("delete", []):
            self.inst.queue.delete(prompt_id)
        return web.Response(status=200)

    async def get_history(self, request: web.Request) -> web.Response:
        """GET /history[?max_items=N&offset=M]."""
        max_items = request.query.get("max_items")
        offset = request.query.get("offset")
        return web.json_response(self.inst.queue.get_history(
            int(max_items) if max_items is not None else None,
            int(offset) if offset is not None else -1))

    async def get_history_item(self, request: web.Request) -> web.Response:
        """GET /history/{id}."""
        return web.json_response(self.inst.queue.history_of(request.match_info["prompt_id"]))

    async def post_history(self, request: web.Request) -> web.Response:
        """POST /history {"clear": true} / {"delete": [ids]}."""
        body = await request.json()
        if "clear" in body and body["clear"]:
            self.inst.queue.history.clear()
        for prompt_id in body.get("delete", []):
            self.inst.queue.history.pop(prompt_id, None)
        return web.Response(status=200)

    async def interrupt(self, request: web.Request) -> web.Response:
        """POST /interrupt: bodiless = global; {"prompt_id"} only if that one is running."""
        try:
            body = await request.json()
        except ValueError:
            body = {}
        self.inst.executor.interrupt(body.get("prompt_id"))
        return web.Response(status=200)

    async def free(self, request: web.Request) -> web.Response:
        """POST /free: unload_models / free_memory, applied before the worker's next prompt."""
        body = await request.json()
        self.inst.executor.request_free(bool(body.get("unload_models", False)),
                                        bool(body.get("free_memory", False)))
        return web.Response(status=200)

    async def system_stats(self, request: web.Request) -> web.Response:
        """GET /system_stats (counted for the tests)."""
        self.inst.recorder.count_system_stats()
        return web.json_response(system_stats(self.inst.port))

    async def features(self, request: web.Request) -> web.Response:
        """GET /features."""
        return web.json_response(dict(SERVER_FEATURES))

    async def object_info(self, request: web.Request) -> web.Response:
        """GET /object_info: the classes this instance serves."""
        return web.json_response(self.inst.catalogue.object_info())

    async def object_info_node(self, request: web.Request) -> web.Response:
        """GET /object_info/{class}: {} for a class this instance does not serve."""
        name = request.match_info["node_class"]
        return web.json_response(self.inst.catalogue.object_info_node(name))

    async def embeddings(self, request: web.Request) -> web.Response:
        """GET /embeddings: none installed."""
        return web.json_response([])

    async def models(self, request: web.Request) -> web.Response:
        """GET /models: the model folder names."""
        return web.json_response(list(model_files(self.inst)))

    async def models_in(self, request: web.Request) -> web.Response:
        """GET /models/{folder}: its file names relative to it, sorted as get_filename_list
        gives them; a bare 404 for a folder ComfyUI does not know."""
        files = model_files(self.inst).get(request.match_info["folder"])
        if files is None:
            return web.Response(status=404)
        return web.json_response(sorted(files))

    async def extensions(self, request: web.Request) -> web.Response:
        """GET /extensions: no frontend extensions in the fake."""
        return web.json_response([])

    async def view(self, request: web.Request) -> web.Response:
        """GET /view: 400 traversal or bad type, 403 subfolder escape, 404 missing."""
        if "filename" not in request.query:
            return web.Response(status=404)
        filename, kind = annotated(request.query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        kind = kind or request.query.get("type", "output")
        if kind not in KINDS:
            return web.Response(status=400)
        try:
            subfolder = clean_subfolder(request.query.get("subfolder", ""))
        except PathError:
            return web.Response(status=403)
        return self._file_response(kind, subfolder, posixpath.basename(filename))

    def _file_response(self, kind: str, subfolder: str, filename: str) -> web.Response:
        """The stored file with ComfyUI's headers (preview/channel re-encoding not emulated)."""
        data = self.inst.files.get(kind, subfolder, filename)
        if data is None:
            return web.Response(status=404)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in UNSAFE_TYPES:
            content_type = "application/octet-stream"
        return web.Response(body=data, content_type=content_type,
                            headers={"Content-Disposition": f'filename="{filename}"'})

    async def upload_image(self, request: web.Request) -> web.Response:
        """POST /upload/image as image_upload: multipart `image`, optional `type` (input),
        `subfolder`, `overwrite`; answers {"name", "subfolder" as sent, "type"}."""
        fields = multipart.parse(request.headers.get("Content-Type", ""), await request.read())
        image = fields.get("image")
        if image is None or not (image.filename or image.data):
            return web.Response(status=400)  # no part, or an empty text field (falsy)
        if not image.filename:
            raise web.HTTPInternalServerError()  # a text field has no .file: AttributeError
        kind = fields["type"].text() if "type" in fields else "input"
        if kind not in KINDS:
            raise web.HTTPInternalServerError()  # get_dir_by_type leaves its directory unset
        subfolder = fields["subfolder"].text() if "subfolder" in fields else ""
        overwrite = "overwrite" in fields and fields["overwrite"].text() in ("true", "1")
        try:
            name, folder, base = self.inst.files.upload(kind, subfolder, image.filename,
                                                        image.data, overwrite)
        except PathError:
            return web.Response(status=400)
        except (ValueError, OSError):
            raise web.HTTPInternalServerError()  # what makedirs/open raise in ComfyUI
        if kind == "input":
            self.inst.recorder.add_upload(Upload(folder, base, image.data))
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})


def create_app(instance: "Instance") -> web.Application:
    """The aiohttp application of one instance: routes, their /api aliases, middlewares."""
    app = web.Application(middlewares=[observer(instance), origin_only],
                          client_max_size=SERVER_FEATURES["max_upload_size"])
    routes = Routes(instance).table()
    app.add_routes([web.route(r.method, "/api" + r.path, r.handler) for r in routes])
    app.add_routes(routes)
    return app
