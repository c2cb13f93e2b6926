"""edge-view's web server (aiohttp): the page, its live updates (server-sent events), the state as
JSON and the masks as PNG. A thread of its own subscribes to the publisher and feeds LineState;
the page is redrawn from snapshots pushed at most UPDATES_PER_S times a second."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from edge.client import Subscriber
from edge.view.state import LineState

log = logging.getLogger("edge.view")
STATIC = Path(__file__).parent / "static"
UPDATES_PER_S = 10
STATE_KEY = web.AppKey("state", LineState)
LOCK_KEY = web.AppKey("lock", threading.Lock)


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
        png = request.app[STATE_KEY].masks.get(request.match_info["frame_id"])
    if png is None:
        raise web.HTTPNotFound(text="no such mask (only the latest are kept)")
    return web.Response(body=png, content_type="image/png")


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


def make_app(state: LineState, lock: threading.Lock) -> web.Application:
    app = web.Application()
    app[STATE_KEY], app[LOCK_KEY] = state, lock
    app.add_routes([
        web.get("/", _index),
        web.get("/events", _events),
        web.get("/api/state", _state),
        web.get("/mask/{frame_id}.png", _mask),
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


def serve(make_subscriber: Callable[[], Subscriber], station: str, host: str, port: int) -> None:
    """Run the page until interrupted (SIGINT/SIGTERM end aiohttp's loop)."""
    state, lock = LineState(station), threading.Lock()
    feed = Feed(make_subscriber(), state, lock).start()
    try:
        log.info("edge-view for station %s on http://%s:%d/", station, host, port)
        web.run_app(make_app(state, lock), host=host, port=port, print=None, handle_signals=True)
    finally:
        feed.close()
