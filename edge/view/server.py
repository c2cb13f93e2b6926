"""edge-view's web server (aiohttp): the page, its live updates (server-sent events), the state as
JSON, the masks and recent frames as PNG, the bank's versions, and the actions (clear a reject,
build the next version, activate one) for people whose token allows them. A thread of its own
subscribes to the publisher and feeds LineState; the page is redrawn from snapshots pushed at most
UPDATES_PER_S times a second."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.client import Subscriber
from edge.errors import EdgeError
from edge.protocol import is_name
from edge.view.access import Access, Person
from edge.view.actions import ActionError, Actions
from edge.view.recipes import RecipeEditor
from edge.view.state import LineState

log = logging.getLogger("edge.view")
STATIC = Path(__file__).parent / "static"
UPDATES_PER_S = 10
STATE_KEY = web.AppKey("state", LineState)
LOCK_KEY = web.AppKey("lock", threading.Lock)
ACTIONS_KEY = web.AppKey("actions", Actions)
ACCESS_KEY = web.AppKey("access", Access)
ACTING_KEY = web.AppKey("acting", asyncio.Lock)  # one change to the store at a time
EDITOR_KEY: web.AppKey[RecipeEditor | None] = web.AppKey("editor")
MAX_REQUEST_BYTES = 256 * 1024  # a recipe's regions: up to 64 polygons of up to 256 corners


def _snapshot(app: web.Application) -> dict:
    with app[LOCK_KEY]:
        return app[STATE_KEY].snapshot(time.monotonic())


def _changes(app: web.Application) -> int:
    with app[LOCK_KEY]:
        return app[STATE_KEY].changes


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def _state(request: web.Request) -> web.Response:
    return web.json_response(_snapshot(request.app))


async def _mask(request: web.Request) -> web.Response:
    with request.app[LOCK_KEY]:
        png = request.app[STATE_KEY].masks.get(request.query.get("id", ""))
    if png is None:
        raise web.HTTPNotFound(text="no such mask (only the latest are kept)")
    return web.Response(body=png, content_type="image/png")


async def _frame(request: web.Request) -> web.FileResponse:
    ring = request.app[ACTIONS_KEY].ring
    camera, frame_id = request.match_info["camera"], request.query.get("id", "")
    frame = ring.get(camera, frame_id) if ring is not None and is_name(camera) else None
    if frame is None:
        raise web.HTTPNotFound(text="no such frame among the recent frames")
    return web.FileResponse(frame.png, headers={"Content-Type": "image/png", "Cache-Control": "max-age=3600"})


def _person(request: web.Request, role: str | None = None) -> Person | None:
    """Who the request's token names; with `role`, refused unless that person may act so."""
    access = request.app[ACCESS_KEY]
    person = access.person(request.headers.get("Authorization"))
    if role is None:
        return person
    if access.read_only:
        raise web.HTTPForbidden(text="edge-view runs read-only: start it with --tokens to allow actions")
    if person is None:
        raise web.HTTPUnauthorized(text="sign in with your token", headers={"WWW-Authenticate": "Bearer"})
    if not person.may(role):
        raise web.HTTPForbidden(text=f"{person.name} is {person.role}; this needs {role}")
    return person


def _actor(request: web.Request, role: str) -> Person:
    """The person a request that acts names, refused unless they may act as `role`."""
    person = _person(request, role)
    assert person is not None  # _person refuses a request without one
    return person


async def _whoami(request: web.Request) -> web.Response:
    person = _person(request)
    return web.json_response({
        "name": person.name if person else None,
        "role": person.role if person else "viewer",
        "read_only": request.app[ACCESS_KEY].read_only,
    })  # fmt: skip


async def _bank(request: web.Request) -> web.Response:
    recipe = request.query.get("recipe") or None
    return web.json_response(await asyncio.to_thread(request.app[ACTIONS_KEY].bank, recipe))


async def _body(request: web.Request) -> dict[str, Any]:
    """A JSON request body that is an object; a clear 400 for anything else."""
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the request body is not JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= 256 or not value.isprintable():
        raise web.HTTPBadRequest(text=f"{name} must be printable text of 1-256 characters")
    return value


async def _fields(request: web.Request, names: tuple[str, ...]) -> list[str]:
    """The named string fields of a JSON request body; a clear 400 for anything else."""
    body = await _body(request)
    return [_text(body, name) for name in names]


def _recipe(body: dict[str, Any]) -> str | None:
    """The recipe a request names, if any (a station with recipes: one bank store each)."""
    return None if body.get("recipe") is None else _text(body, "recipe")


async def _act(request: web.Request, action: Callable[[], dict], exclusive: bool = True) -> web.Response:
    """Run an action off the event loop; `exclusive`: one change to the stores at a time."""
    async with request.app[ACTING_KEY] if exclusive else contextlib.nullcontext():
        try:
            return web.json_response(await asyncio.to_thread(action))
        except ActionError as error:
            return web.json_response({"ok": False, "error": str(error)}, status=error.status)
        except (OSError, EdgeError) as error:  # a full disk, a store changed under us: said, not crashed
            log.error("%s %s failed: %s", request.method, request.path, error)
            reply = {"ok": False, "error": f"the station could not do it: {error}"}
            return web.json_response(reply, status=500)


async def _clear(request: web.Request) -> web.Response:
    person = _actor(request, "operator")
    camera, frame_id = await _fields(request, ("camera", "frame_id"))
    return await _act(request, lambda: request.app[ACTIONS_KEY].clear(camera, frame_id, person))


async def _build(request: web.Request) -> web.Response:
    person = _actor(request, "engineer")
    recipe = _recipe(await _body(request))
    return await _act(request, lambda: request.app[ACTIONS_KEY].start_build(person, recipe))


async def _activate(request: web.Request) -> web.Response:
    person = _actor(request, "engineer")
    body = await _body(request)
    version, recipe = _text(body, "version"), _recipe(body)
    return await _act(request, lambda: request.app[ACTIONS_KEY].activate(version, person, recipe))


def _editor(request: web.Request) -> RecipeEditor:
    editor = request.app[EDITOR_KEY]
    if editor is None:
        raise web.HTTPConflict(text="edge-view was started without --config: it has no recipes to edit")
    return editor


async def _recipes(request: web.Request) -> web.Response:
    editor = request.app[EDITOR_KEY]
    if editor is None:
        return web.json_response({"recipes": [], "mm_per_px": {}, "can_judge": False})
    return web.json_response(await asyncio.to_thread(editor.recipes))


async def _recipe_image(request: web.Request) -> web.FileResponse:
    name = request.match_info["recipe"]
    try:
        path = await asyncio.to_thread(_editor(request).image, name) if is_name(name) else None
    except ActionError:
        path = None
    if path is None:
        raise web.HTTPNotFound(text="no picture for this recipe: no kept frame judged by it yet")
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "no-cache"})


async def _regions_request(request: web.Request) -> tuple[Person, RecipeEditor, str, dict[str, Any]]:
    person = _actor(request, "engineer")
    editor = _editor(request)
    body = await _body(request)
    name = _text(body, "recipe")
    return person, editor, name, {k: v for k, v in body.items() if k != "recipe"}


async def _what_if(request: web.Request) -> web.Response:
    person, editor, name, proposal = await _regions_request(request)
    return await _act(request, lambda: editor.what_if(name, proposal, person), exclusive=False)


async def _stage_regions(request: web.Request) -> web.Response:
    person, editor, name, proposal = await _regions_request(request)
    return await _act(request, lambda: editor.stage(name, proposal, person))


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot whenever something changed (and every second regardless, so
    the page can tell a silent publisher from a quiet line)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    sent_changes, sent_at = -1, 0.0
    try:
        while True:  # a snapshot (percentiles, histograms) is built only when it is to be sent
            if _changes(request.app) != sent_changes or time.monotonic() - sent_at >= 1.0:
                snapshot = _snapshot(request.app)
                await response.write(f"data: {json.dumps(snapshot)}\n\n".encode())
                sent_changes, sent_at = snapshot["changes"], time.monotonic()
            await asyncio.sleep(1 / UPDATES_PER_S)
    except ConnectionResetError:  # the page was closed
        pass
    return response


def make_app(
    state: LineState,
    lock: threading.Lock,
    actions: Actions | None = None,
    access: Access | None = None,
    editor: RecipeEditor | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[STATE_KEY], app[LOCK_KEY] = state, lock
    app[ACTIONS_KEY], app[ACCESS_KEY] = actions or Actions(None, None), access or Access()
    app[ACTING_KEY], app[EDITOR_KEY] = asyncio.Lock(), editor
    app.add_routes([
        web.get("/", _index),
        web.get("/events", _events),
        web.get("/api/state", _state),
        web.get("/api/whoami", _whoami),
        web.get("/api/bank", _bank),
        web.post("/api/clear", _clear),
        web.post("/api/activate", _activate),
        web.post("/api/build", _build),
        web.get("/api/recipes", _recipes),
        web.post("/api/what-if", _what_if),
        web.post("/api/regions", _stage_regions),
        web.get("/recipe-image/{recipe}", _recipe_image),
        web.get("/mask", _mask),  # ?id=<frame id> (any printable text, so not a path segment)
        web.get("/frame/{camera}", _frame),  # ?id=<frame id>
    ])  # fmt: skip
    return app


class Feed:
    """The subscription, on a thread of its own: every event goes into the state under the lock."""

    def __init__(self, subscriber: Subscriber, state: LineState, lock: threading.Lock) -> None:
        self.subscriber, self.state, self.lock = subscriber, state, lock
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="subscriber", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            event = self.subscriber.receive(0.2)
            if event is not None:
                with self.lock:
                    self.state.apply(event, time.monotonic())

    def start(self) -> Feed:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.subscriber.close()


def serve(
    make_subscriber: Callable[[], Subscriber],
    station: str,
    host: str,
    port: int,
    actions: Actions | None = None,
    access: Access | None = None,
    editor: RecipeEditor | None = None,
) -> None:
    """Run the page until interrupted (SIGINT/SIGTERM end aiohttp's loop)."""
    state, lock = LineState(station), threading.Lock()
    state.frames = actions is not None and actions.ring is not None
    feed = Feed(make_subscriber(), state, lock).start()
    try:
        log.info("edge-view for station %s on http://%s:%d/", station, host, port)
        app = make_app(state, lock, actions, access, editor)
        web.run_app(app, host=host, port=port, print=None, handle_signals=True)
    finally:
        feed.close()
