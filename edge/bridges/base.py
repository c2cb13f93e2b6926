"""The frame every plant bridge stands on; MQTT, OPC UA and Modbus are adapters of it.

A bridge subscribes to one station's publisher, follows its heartbeats ("alive"), counts and
reports what the station no longer held when asked (losses), resumes after a restart where it
stopped (`Positions`, with the station's replay query) and serves its own Prometheus metrics. An
adapter only says what a verdict, a heartbeat, a mask, a loss and a change of "alive" become in
its plant protocol, and how it closes. Its settings are its section of the station file
(`bridges.<name>`, a `BridgeConfig`), the only declaration of its knobs: its command-line options
are derived from the section and validated by it, so a bridge started with options and one
started with `--config station.yaml` are checked by the same rules.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import zmq
from pydantic import ValidationError

from edge.bridges.feed import Positions
from edge.cli_support import setup_logging
from edge.client import RETRY_S, Event, Loss, Subscriber
from edge.config import BridgeConfig, describe_errors, load_config, path_problems
from edge.errors import ConfigError, UsageError
from edge.lifecycle import stop_on_signals
from edge.options import add_model_options, model_settings
from edge.protocol import Heartbeat, VerdictMessage, parse_topic
from edge.security import CurveClient
from edge.sockets import local_endpoint

SILENCE_LOG_S = 60.0  # while the station is silent, the log says so this often
EXIT_CODES = "exit codes: 0 stopped; 2 bad usage; 6 bad configuration or key file; 130 interrupted"


@dataclass(frozen=True)
class StationLink:
    """The station a bridge serves: where its publisher is, its cameras and the keys to reach it."""

    station: str
    station_endpoint: str  # the publisher's PUB
    query_endpoint: str | None = None  # its latest/replay endpoint: resumption and gap fetching
    cameras: tuple[str, ...] = ()  # the cameras served; none: every camera, as its verdicts come
    curve: CurveClient | None = None
    control_endpoint: str | None = None  # the worker's control endpoint: its recipes, a camera's selection
    triggers: dict[str, str] = field(default_factory=dict)  # triggered camera → where to send its triggers
    products: dict[int, str] = field(default_factory=dict)  # a recipe's number → its name
    recipes: tuple[str, ...] = ()  # the station's recipe names (none known: any name is sent on)

    def serves(self, camera: str) -> bool:
        return not self.cameras or camera in self.cameras


def trigger_socket(link: StationLink, camera: str, key: str) -> zmq.Socket:
    """A PUSH socket to `camera`'s triggers, for a bridge that triggers parts (setting `key`): it
    queues nothing for a capture that is not there, so a send to one fails at once (zmq.Again)."""
    endpoint = link.triggers.get(camera)
    if endpoint is None:
        triggered = sorted(link.triggers) or "none"
        raise ConfigError(
            f"{key}: {camera} is not a triggered camera of the station file (triggered: {triggered}); "
            "triggering parts needs --config"
        )
    socket: zmq.Socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.setsockopt(zmq.IMMEDIATE, 1)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    return socket


def host_port(value: str, default_port: int) -> tuple[str, int]:
    """'host' or 'host:port' (the section's pattern has checked the form)."""
    host, _, port = value.partition(":")
    return host, int(port or default_port)


def state_path(section: BridgeConfig, name: str) -> Path | None:
    """The positions file: the section's, else under systemd's StateDirectory=, else none."""
    if section.state is not None:
        return Path(section.state)
    directory = os.environ.get("STATE_DIRECTORY")
    return Path(directory.split(":")[0]) / f"{name}-positions.json" if directory else None


def link_from_config(path: Path, name: str) -> tuple[StationLink, BridgeConfig]:
    """The station's side and section `bridges.<name>` of its YAML; a missing section, or a file
    the section names that is not there, is a ConfigError naming the key."""
    config = load_config(path)
    section = config.bridges.configured().get(name)
    if section is None:
        raise ConfigError(f"{path}: no bridges.{name} section: nothing for edge-{name}-bridge to do")
    problems = path_problems(section, f"bridges.{name}.")
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    latest = config.endpoints.latest
    keys = section.curve
    link = StationLink(
        station=config.station,
        station_endpoint=local_endpoint(config.endpoints.publish),
        query_endpoint=local_endpoint(latest) if latest else None,
        cameras=tuple(section.cameras or config.camera_names),
        curve=CurveClient(keys.secret_key, keys.server_key) if keys else None,
        control_endpoint=local_endpoint(config.endpoints.control) if config.endpoints.control else None,
        triggers={c.name: local_endpoint(c.trigger_endpoint) for c in config.cameras if c.trigger_endpoint},
        products={r.number: r.name for r in config.recipe_list if r.number is not None},
        recipes=tuple(r.name for r in config.recipe_list),
    )
    return link, section


def section_from_options(
    args: argparse.Namespace, section_type: type[BridgeConfig], options: dict[str, str]
) -> BridgeConfig:
    """The section the options give, validated as the station file's would be; a mistake is a
    UsageError naming the option."""

    def named(problem: str) -> str:
        key, _, says = problem.partition(": ")
        return f"{options.get(key.removesuffix('.'), key)}: {says}"

    try:
        section = section_type.model_validate(model_settings(args, section_type))
    except ValidationError as exc:
        raise UsageError("\n".join(named(p) for p in describe_errors(exc))) from None
    problems = path_problems(section)
    if problems:
        raise UsageError("\n".join(named(p) for p in problems))
    return section


class Bridge:
    """One station's verdicts and heartbeats into a plant protocol; subclasses are adapters."""

    name: ClassVar[str]  # bridges.<name>, edge-<name>-bridge, its metrics edge_<name>_*
    section_type: ClassVar[type[BridgeConfig]]
    poll_s = 0.05  # the longest a step waits for the station before `tick`

    def __init__(self, link: StationLink, section: BridgeConfig, topics: tuple[str, ...] = ()) -> None:
        self.link, self.section = link, section
        self.log = logging.getLogger(f"edge.{self.name}")
        self.positions = Positions.load(state_path(section, self.name))
        self.subscriber = Subscriber(
            link.station_endpoint,
            link.station,
            topics=topics or ("verdict", "heartbeat"),
            curve=link.curve,
            query_endpoint=link.query_endpoint,
        )
        self.last_heard = -math.inf
        self.alive: bool | None = None
        self.lost = 0  # verdicts the station no longer held when asked
        self.last_loss: Loss | None = None
        self.next_silence_log = time.monotonic() + section.alive_timeout_s
        self._resume()

    # ---- what an adapter says ----------------------------------------------------------------------
    def on_verdict(self, event: Event, verdict: VerdictMessage) -> None:
        raise NotImplementedError

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        """A heartbeat (alive is tracked by the base)."""

    def on_mask(self, camera: str, frame_id: str, png: bytes) -> None:
        """A NOK mask (only bridges that subscribe to masks get one)."""

    def on_loss(self, camera: str, loss: Loss) -> None:
        """Verdicts of `camera` the station no longer held (already counted and logged)."""

    def on_alive(self, alive: bool) -> None:
        """The station's heartbeats started or stopped arriving (and once at start)."""

    def tick(self, now: float) -> None:
        """Once per step, after what arrived was handed on."""

    def holding(self) -> bool:
        """True while what is downstream cannot take more: the station keeps the rest meanwhile."""
        return False

    def wait_downstream(self, timeout_s: float) -> None:
        time.sleep(timeout_s)

    def own_samples(self) -> list[tuple]:
        return []

    def close(self) -> None:
        self.subscriber.close()

    # ---- the frame ---------------------------------------------------------------------------------
    def delivered(self, verdict: VerdictMessage) -> None:
        """A verdict passed on for good (written, acknowledged): the saved position moves past it."""
        self.positions.sent(verdict)
        self.positions.acknowledged(verdict)

    def _resume(self) -> None:
        if not self.positions.saved:
            return
        self.subscriber.resume(self.positions.saved)
        where = ", ".join(f"{t}{e}/{s}" for t, (e, s) in self.positions.saved.items())
        if self.subscriber.unfetched:
            self.log.warning("resuming after %s: the station does not answer yet; asking again every %.0f s",
                             where, RETRY_S)  # fmt: skip
        else:
            self.log.info("resumed after %s: %d verdict(s) published meanwhile fetched from the station",
                          where, self.subscriber.recovered)  # fmt: skip

    def step(self, timeout_s: float = 0.05) -> None:
        if self.holding():
            self.wait_downstream(min(timeout_s, 0.01))
            return
        event = self.subscriber.receive(timeout_s)
        now = time.monotonic()
        if event is not None:
            self._hand_on(event, now)
        self._losses()
        self._check_alive(now)
        self.tick(now)

    def _hand_on(self, event: Event, now: float) -> None:
        if not event.replayed:  # a replayed verdict says nothing about the station now
            self.last_heard = now
        topic = parse_topic(event.topic)
        if event.heartbeat is not None:
            self.on_heartbeat(event.heartbeat)
        elif not self.link.serves(topic.camera):
            return
        elif event.verdict is not None:
            if event.restart:
                self.log.warning("the station's publisher restarted (epoch %d)", event.epoch)
            self.on_verdict(event, event.verdict)
        elif event.mask_png is not None and event.frame_id is not None:
            self.on_mask(topic.camera, event.frame_id, event.mask_png)

    def _losses(self) -> None:
        for loss in self.subscriber.take_losses():
            topic = parse_topic(loss.topic)
            if topic.kind != "verdict" or not self.link.serves(topic.camera):
                continue  # a heartbeat or mask lost says nothing about results
            self.lost += loss.count or 0
            self.last_loss = loss
            self.log.error("%s (not recoverable from the station)", loss)
            self.on_loss(topic.camera, loss)

    def _check_alive(self, now: float) -> None:
        alive = now - self.last_heard < self.section.alive_timeout_s
        if alive != self.alive:
            if self.alive is not None:
                level = logging.INFO if alive else logging.WARNING
                self.log.log(level, "station %s alive: %s", self.link.station, alive)
            self.alive = alive
            self.on_alive(alive)
        if not alive and now >= self.next_silence_log:
            silent = "since the bridge started" if math.isinf(self.last_heard) else (
                f"for {now - self.last_heard:.0f} s")  # fmt: skip
            self.log.warning("nothing heard from station %s %s", self.link.station, silent)
            self.next_silence_log = now + SILENCE_LOG_S

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.step(self.poll_s)
        finally:
            self.close()
            self.log.info("bridge stopped (%d verdict(s) the station no longer held)", self.lost)

    def samples(self) -> list[tuple]:
        """Prometheus samples (edge.metrics.ProcessMetrics.snapshot): the frame's, then the adapter's."""
        prefix, alive = f"edge_{self.name}", int(bool(self.alive))
        return [
            (
                "counter",
                f"{prefix}_lost_verdicts",
                "verdicts the station no longer held when asked",
                self.lost,
            ),
            (
                "counter",
                f"{prefix}_malformed",
                "malformed messages from the station",
                self.subscriber.malformed,
            ),
            ("gauge", f"{prefix}_station_alive", "1 while the station's heartbeats arrive", alive),
            *self.own_samples(),
        ]


def _options(bridge: type[Bridge], doc: str) -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(prog=f"edge-{bridge.name}-bridge", description=doc, epilog=EXIT_CODES)
    station = parser.add_argument_group("the station (or --config)")
    station.add_argument(
        "station_endpoint", nargs="?", help="the station's PUB endpoint, e.g. tcp://station:5556"
    )
    station.add_argument(
        "--config", type=Path, help=f"the station's YAML: endpoints, cameras, bridges.{bridge.name}"
    )
    station.add_argument("--station", help="station name (topics verdict.<station>.*)")
    station.add_argument("--query", help="the publisher's query endpoint: what the bridge missed is fetched")
    station.add_argument("--control", help="the worker's control endpoint: its recipes (OPC UA ListRecipes)")
    section = parser.add_argument_group(f"bridges.{bridge.name} (each option is a key of the section)")
    return parser, add_model_options(section, bridge.section_type)  # fmt: skip


def bridge_main(
    bridge: type[Bridge],
    argv: list[str] | None,
    doc: str,
    more: Callable[[argparse.ArgumentParser], None] | None = None,
    chores: Callable[[argparse.Namespace], bool] | None = None,
) -> int:
    """A bridge's command: its options (the station's, its section's, `more`), `chores` that do
    something else and exit (True when one ran), then the bridge until SIGTERM."""
    parser, options = _options(bridge, doc)
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if chores is not None and chores(args):
        return 0
    module, extra = bridge.section_type.needs
    try:
        __import__(module)
    except ImportError:
        raise UsageError(f"edge-{bridge.name}-bridge needs {module.split('.')[0]}: "
                         f"pip install 'edge[{extra}]'") from None  # fmt: skip
    if args.config is not None:
        given = [o for key, o in options.items() if getattr(args, key) is not None]
        given += [o for o in ("--station", "--query", "--control") if getattr(args, o[2:]) is not None]
        if args.station_endpoint or given:
            raise UsageError(f"--config gives the station and bridges.{bridge.name}: leave out "
                             f"{', '.join(given) or 'the endpoint'}")  # fmt: skip
        link, section = link_from_config(args.config, bridge.name)
    else:
        if not (args.station_endpoint and args.station):
            raise UsageError("give the station's endpoint and --station (or --config station.yaml)")
        section = section_from_options(args, bridge.section_type, options)
        keys = section.curve
        link = StationLink(
            args.station,
            args.station_endpoint,
            args.query,
            tuple(section.cameras or ()),
            CurveClient(keys.secret_key, keys.server_key) if keys else None,
            args.control,
        )
    stop = stop_on_signals()
    running = bridge(link, section)
    metrics = None
    if section.metrics_port is not None:
        from edge.metrics import ProcessMetrics

        metrics = ProcessMetrics(f"{bridge.name}-bridge", link.station)
        metrics.snapshot(running.samples)
        metrics.serve(section.metrics_port)
    try:
        running.run(stop)
    finally:
        if metrics is not None:
            metrics.close()
    return 0
