"""edge-opcua-bridge: a station's results in an OPC UA address space, for MES, SCADA and PLCs.

Modelled after the result concepts of OPC 40100 (Machine Vision): per camera the last result, its
counters, a ResultReady event per verdict carrying the same fields, and the station's "vision
alive". Node ids are strings in namespace `urn:edge:machine-vision` (docs/operations.md lists them):

    <station>                            Object; emits ResultReadyEventType events
    <station>.VisionAlive                Boolean: the station's heartbeats arrive
    <station>.LastHeartbeatTime          DateTime
    <station>.<camera>.Result.<Field>    the camera's last result: ResultId (the frame id), PartId,
                                         Verdict (OK, NOK, ERROR, TIMEOUT), IsPartGood, Score,
                                         Threshold, CaptureTime, DecisionTime, DefectAreaPx, BankId,
                                         BankVersion, Epoch, Seq, Recipe, Reason (the verdict's
                                         reason: defect, deadline, recipe, ...), DecidingRegion,
                                         DefectCount, Defects (JSON: region, area, box, peak each)
    <station>.<camera>.Counters.<Name>   Total, Ok, Nok, Error, Timeout (since the bridge started)
    <station>.<camera>.Counters.LostResults  results the station no longer held when the bridge asked
    <station>.<camera>.CameraState       String: streaming, starting, reconnecting, gone, ended or
                                         silent (docs/protocol.md); CameraStateReason (String, why it
                                         is not streaming) and CameraStateSince (DateTime) beside it
    <station>.GetResultsSince(Camera, Epoch, Seq) -> Results (JSON)   one page of the station's
                                         verdicts after (Epoch, Seq): {"results": [...], "more": bool,
                                         "missing": [{"epoch", "from_seq", "to_seq"}], "complete": bool}
    <station>.GetResult(ResultId) -> Result (JSON)   one recent result by frame id ("" if unknown)
    <station>.ListRecipes() -> Recipes (JSON)   the worker's recipes (OPC 40100's recipe management):
                                         {"recipes": [...], "selected": {camera: recipe}} (needs the
                                         worker's control endpoint: --control, or --config)
    <station>.SelectRecipe(Camera, Recipe) -> Error   only with `select_recipes`: that recipe judges
                                         the camera's frames that name no product ("" when done)
    <station>.VisionStateMachine.CurrentState   String, OPC 40100's vision system state:
                                         Preoperational (the station not heard yet), Ready, Busy (a
                                         job started here awaits its result), Error (heartbeats
                                         stopped, or a camera not streaming), Halted (the bridge
                                         stopping); ErrorReason (String), Since (DateTime) and
                                         ActiveJob (String: the part id in progress) beside it
    <station>.StartSingleJob(PartId, Product) -> Error   only with `job_camera`: trigger that camera's
                                         next part (Product: a recipe's name, "" for the default), as
                                         the Modbus handshake does; refused unless Ready, with why;
                                         the result comes as every result does (PartId tells it)

Events are not stored by OPC UA: a client that must see every verdict keeps the Epoch and Seq of the
last one it handled and, after a reconnect or a jump in Seq, calls GetResultsSince from there, again
from the last result of each page while "more" is true. The station's publisher keeps every verdict
for `publisher.replay_s` (an hour by default), across its restarts. While the station is not alive
the method answers {"error": ...} at once rather than wait. Results the bridge found lost raise a
ResultsLostEventType event (Severity 900) naming the range. The methods only read, unless the
section sets `select_recipes` (SelectRecipe changes which recipe judges a free-running camera's
frames) or `job_camera` (StartSingleJob triggers parts); nothing else about the bank or the station
can be changed over OPC UA.

Security: Basic256Sha256 with Sign and SignAndEncrypt, a server certificate and key
(`--make-certificate` writes both), and a folder of trusted client certificates; a client whose
certificate is not there is refused (at CreateSession). With `--users FILE` clients also log in with
a user name and password (`--add-user NAME` stores a salted scrypt hash); without it, the trusted
certificate is the client's identity. A channel with security None is refused, whatever the client
asked for, and so is a session without a trusted certificate, unless `--allow-anonymous`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import hmac
import json
import logging
import math
import os
import socket
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zmq

from edge.bridges.base import Bridge, StationLink, bridge_main, trigger_socket
from edge.bridges.vision_state import BUSY, PREOPERATIONAL, READY, vision_state
from edge.cli_support import run_cli
from edge.client import Event, Loss, control_request, request, select_recipe
from edge.config import OpcUaBridgeConfig
from edge.errors import UsageError
from edge.protocol import (
    NAME_MEANING,
    Heartbeat,
    ProtocolError,
    Query,
    ReplayReply,
    VerdictMessage,
    encode_query,
    encode_trigger,
    is_name,
    verdict_body,
)

log = logging.getLogger("edge.opcua")
NAMESPACE = "urn:edge:machine-vision"
APPLICATION_URI = "urn:edge:opcua-bridge"
RECENT_RESULTS = 1000  # per camera, for GetResult
QUERY_TIMEOUT_S = 0.5  # the publisher answers a page at once; an OPC UA client must not wait on a dead one
LOST_SEVERITY = 900
RESULT_FIELDS = (  # name, OPC UA type, from a verdict
    ("ResultId", "String"), ("PartId", "String"), ("Verdict", "String"), ("IsPartGood", "Boolean"),
    ("Score", "Double"), ("Threshold", "Double"), ("CaptureTime", "DateTime"), ("DecisionTime", "DateTime"),
    ("DefectAreaPx", "UInt32"), ("BankId", "String"), ("BankVersion", "String"), ("Epoch", "UInt64"),
    ("Seq", "UInt64"), ("Recipe", "String"), ("Reason", "String"), ("DecidingRegion", "String"),
    ("DefectCount", "UInt32"), ("Defects", "String"),
)  # fmt: skip
COUNTERS = ("Total", "Ok", "Nok", "Error", "Timeout", "LostResults")
NO_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC UA's null DateTime
# a camera's state as a heartbeat carries it: state, reason, since
CAMERA_STATE_FIELDS = (
    ("CameraState", "String"),
    ("CameraStateReason", "String"),
    ("CameraStateSince", "DateTime"),
)
EMPTY = {
    "String": "",
    "Boolean": False,
    "Double": float("nan"),
    "DateTime": NO_TIME,
    "UInt32": 0,
    "UInt64": 0,
}


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, salt, _ = stored.split("$")
        return hmac.compare_digest(hash_password(password, base64.b64decode(salt)), stored)
    except ValueError:
        return False


def read_users(path: Path) -> dict[str, str]:
    users = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            name, _, stored = line.partition(":")
            if not name or not stored.startswith("scrypt$"):
                raise UsageError(f"{path}:{number}: expected NAME:scrypt$... (edge-opcua-bridge --add-user)")
            users[name] = stored
    return users


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def result_values(verdict: VerdictMessage, decided: datetime) -> dict[str, Any]:
    """The Result fields of one verdict (None where the verdict has no value)."""
    return {
        "ResultId": verdict.frame_id,
        "PartId": verdict.part_id or "",
        "Verdict": str(verdict.verdict.value),
        "IsPartGood": verdict.verdict.value == "OK",
        "Score": float("nan") if verdict.score is None else float(verdict.score),
        "Threshold": float("nan") if verdict.threshold is None else float(verdict.threshold),
        "CaptureTime": _time(verdict.capture_utc) or decided,
        "DecisionTime": decided,
        "DefectAreaPx": int(verdict.defect_area_px),
        "BankId": verdict.bank_id or "",
        "BankVersion": verdict.bank_version or "",
        "Epoch": int(verdict.epoch),
        "Seq": int(verdict.seq),
        "Recipe": verdict.recipe or "",
        "Reason": verdict.reason or "",
        "DecidingRegion": verdict.region or "",
        "DefectCount": len(verdict.defects),
        "Defects": json.dumps(verdict.defects, separators=(",", ":")),
    }


class _Users:
    """asyncua's user manager: name and password against the stored scrypt hashes."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def get_user(self, iserver, username=None, password=None, certificate=None):  # asyncua's signature
        from asyncua.crypto.permission_rules import User, UserRole

        stored = self.users.get(username or "")
        if stored is None or not check_password(password or "", stored):
            log.warning("refused the login of user %r", username)
            return None
        return User(role=UserRole.User)


class _RefuseUnsecured:
    """A security policy factory that matches a channel asking for security None and refuses it.
    asyncua's server otherwise falls back to the None policy its connections start with, whatever
    endpoints it advertises, so a client that skips its own endpoint check gets a plaintext channel."""

    def matches(self, uri: str, mode=None) -> bool:
        from asyncua.crypto.security_policies import SecurityPolicyNone

        return uri == SecurityPolicyNone.URI

    def create(self, peer_certificate):
        from asyncua import ua

        log.warning("refused a client asking for an unsecured channel (security policy None)")
        raise ua.UaStatusCodeError(ua.StatusCodes.BadSecurityPolicyRejected)


class _OneLine(logging.Filter):
    """asyncua logs a refused client (an untrusted certificate, a None channel) with a traceback:
    one line says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("asyncua") and record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]!r}"
            record.args = ()
            record.exc_info = None
        return True


class OpcUaBridge(Bridge):
    """The address space lives on an asyncio loop of its own; the frame's loop hands each verdict,
    heartbeat and loss to it and waits until it is written (then the verdict counts as passed on)."""

    name = "opcua"
    section_type = OpcUaBridgeConfig
    section: OpcUaBridgeConfig

    def __init__(self, link: StationLink, section: OpcUaBridgeConfig) -> None:
        self.users = read_users(Path(section.users_file)) if section.users_file else None
        self.cameras: dict[str, dict[str, Any]] = {}  # camera → its nodes
        self.recent: dict[str, deque[dict]] = {}
        self.published = 0
        # the vision state's inputs, kept on the address space's loop: the served cameras' states
        # from heartbeats, the part a StartSingleJob triggered (until its result), the bridge stopping
        self.camera_states: dict[str, dict[str, Any]] = {}
        self.job: str | None = None
        self.stopping = False
        self.shown_state: tuple[str, str] | None = None
        self.jobs: zmq.Socket | None = None
        if section.job_camera is not None:
            self.jobs = trigger_socket(link, section.job_camera, "bridges.opcua.job_camera")
        super().__init__(link, section)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="opcua", daemon=True)
        self.thread.start()
        self.server = self._call(self._start())

    def _call(self, work: Any) -> Any:
        """Run coroutine `work` on the address space's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    async def _start(self) -> Any:
        server = await self._server()
        await self._build(server)
        await server.start()
        log.info("serving %s (%s) for station %s", self.section.endpoint_url,
                 "users" if self.users is not None else "certificates", self.link.station)  # fmt: skip
        return server

    async def _server(self) -> Any:  # asyncua.Server
        from asyncua import Server, ua
        from asyncua.crypto.truststore import TrustStore
        from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

        settings, users = self.section, self.users
        manager: Any = _Users(users) if users is not None else None  # asyncua's UserManager, duck-typed
        server = Server(user_manager=manager)
        await server.init()
        server.set_endpoint(settings.endpoint_url)
        server.set_server_name(f"edge vision {self.link.station}")
        await server.set_application_uri(APPLICATION_URI)
        await server.load_certificate(settings.certificate)
        await server.load_private_key(settings.private_key)
        policies = [
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Basic256Sha256_Sign,
        ]
        if settings.allow_anonymous:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(policies)
        if not settings.allow_anonymous:
            refuse: Any = _RefuseUnsecured()  # a SecurityPolicyFactory, duck-typed
            server._policies.append(refuse)  # asked before asyncua's fallback to None
        await server.set_build_info(
            product_uri=APPLICATION_URI,
            manufacturer_name="edge",
            product_name="edge-opcua-bridge",
            software_version=_version(),
            build_number=_version(),
            build_date=datetime(2026, 1, 1, tzinfo=UTC),
        )
        tokens: list[type] = [ua.UserNameIdentityToken] if users is not None else [ua.AnonymousIdentityToken]
        if settings.allow_anonymous and ua.AnonymousIdentityToken not in tokens:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        trust = TrustStore([Path(settings.trust_dir)], [])
        await trust.load()
        options = CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options, trust))
        return server

    async def _build(self, server) -> None:
        from asyncua import ua
        from asyncua.common.methods import uamethod

        self.ua = ua
        idx = self.index = await server.register_namespace(NAMESPACE)
        station = self.link.station
        self.station_node = await server.nodes.objects.add_object(self._id(station), f"{idx}:{station}")
        await self.station_node.write_attribute(
            ua.AttributeIds.EventNotifier, ua.DataValue(ua.Variant(1, ua.VariantType.Byte))
        )
        self.alive_node = await self.station_node.add_variable(
            self._id(f"{station}.VisionAlive"), f"{idx}:VisionAlive", False, ua.VariantType.Boolean
        )
        self.heartbeat_node = await self.station_node.add_variable(
            self._id(f"{station}.LastHeartbeatTime"),
            f"{idx}:LastHeartbeatTime",
            NO_TIME,
            ua.VariantType.DateTime,
        )
        properties = [(name, getattr(ua.VariantType, kind)) for name, kind in RESULT_FIELDS]
        self.event_type = await server.create_custom_event_type(
            idx,
            "ResultReadyEventType",
            ua.ObjectIds.BaseEventType,
            [("Camera", ua.VariantType.String), *properties],
        )
        self.events = await server.get_event_generator(self.event_type, self.station_node)
        lost_type = await server.create_custom_event_type(
            idx,
            "ResultsLostEventType",
            ua.ObjectIds.BaseEventType,
            [("Camera", ua.VariantType.String), ("Epoch", ua.VariantType.UInt64),
             ("FromSeq", ua.VariantType.UInt64), ("ToSeq", ua.VariantType.UInt64),
             ("Count", ua.VariantType.UInt64)],
        )  # fmt: skip
        self.lost_events = await server.get_event_generator(lost_type, self.station_node)

        @uamethod
        async def get_results_since(parent, camera: str, epoch: int, seq: int) -> str:
            return await asyncio.get_running_loop().run_in_executor(
                None, self._results_since, camera, epoch, seq
            )

        @uamethod
        async def get_result(parent, result_id: str) -> str:
            for results in self.recent.values():
                for body in results:
                    if body["frame_id"] == result_id:
                        return json.dumps(body)
            return ""

        since_in = [_argument("Camera", "String", "the camera's name"),
                    _argument("Epoch", "UInt64", "Epoch of the last result handled (0: all kept)"),
                    _argument("Seq", "UInt64", "Seq of the last result handled")]  # fmt: skip
        since_out = [_argument("Results", "String", "JSON: results, more, missing, complete (or error)")]
        await self.station_node.add_method(
            self._id(f"{station}.GetResultsSince"), f"{idx}:GetResultsSince", get_results_since,
            since_in, since_out,
        )  # fmt: skip
        await self.station_node.add_method(
            self._id(f"{station}.GetResult"), f"{idx}:GetResult", get_result,
            [_argument("ResultId", "String", "a frame id")],
            [_argument("Result", "String", "JSON of that result, or empty if not recent")],
        )  # fmt: skip
        await self._recipe_methods(station, idx)
        await self._state_machine(station, idx)
        for camera in self.link.cameras:
            await self._camera(camera)

    def _id(self, name: str) -> Any:
        """The node id `name` in edge's namespace (asyncua's stubs want its String type; a str is one)."""
        return self.ua.NodeId(name, self.index)  # type: ignore[arg-type]

    async def _waiting_variable(self, parent: Any, node_id: str, name: str, kind: str) -> Any:
        """A variable that reads BadWaitingForInitialData until its first value is written."""
        ua, idx = self.ua, self.index
        variant = getattr(ua.VariantType, kind)
        node = await parent.add_variable(self._id(node_id), f"{idx}:{name}", EMPTY[kind], variant)
        waiting = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)
        await node.write_attribute(
            ua.AttributeIds.Value, ua.DataValue(ua.Variant(EMPTY[kind], variant), StatusCode=waiting)
        )
        return node

    async def _camera(self, camera: str) -> dict[str, Any]:
        nodes = self.cameras.get(camera)
        if nodes is not None:
            return nodes
        ua, idx, base = self.ua, self.index, f"{self.link.station}.{camera}"
        camera_node = await self.station_node.add_object(self._id(base), f"{idx}:{camera}")
        result = await camera_node.add_object(self._id(f"{base}.Result"), f"{idx}:Result")
        counters = await camera_node.add_object(self._id(f"{base}.Counters"), f"{idx}:Counters")
        nodes = {"values": {}, "counters": {}, "counts": dict.fromkeys(COUNTERS, 0)}
        for name, kind in RESULT_FIELDS:
            nodes["values"][name] = await self._waiting_variable(result, f"{base}.Result.{name}", name, kind)
        for name in COUNTERS:
            nodes["counters"][name] = await counters.add_variable(
                self._id(f"{base}.Counters.{name}"), f"{idx}:{name}", 0, ua.VariantType.UInt64
            )
        nodes["state"] = {
            name: await self._waiting_variable(camera_node, f"{base}.{name}", name, kind)
            for name, kind in CAMERA_STATE_FIELDS
        }
        nodes["shown_state"] = None
        self.cameras[camera] = nodes
        self.recent[camera] = deque(maxlen=RECENT_RESULTS)
        return nodes

    async def _recipe_methods(self, station: str, idx: int) -> None:
        """OPC 40100's recipe management where the station has it: ListRecipes (read), and with
        `select_recipes` SelectRecipe (a camera's recipe for frames that name no product)."""
        from asyncua.common.methods import uamethod

        @uamethod
        async def list_recipes(parent) -> str:
            return await asyncio.get_running_loop().run_in_executor(None, self._recipes)

        @uamethod
        async def select(parent, camera: str, recipe: str) -> str:
            return await asyncio.get_running_loop().run_in_executor(None, self._select, camera, recipe)

        await self.station_node.add_method(
            self._id(f"{station}.ListRecipes"), f"{idx}:ListRecipes", list_recipes, [],
            [_argument("Recipes", "String", 'JSON: {"recipes": [...], "selected": {camera: recipe}}')],
        )  # fmt: skip
        if self.section.select_recipes:
            named = [_argument("Camera", "String", "a camera"), _argument("Recipe", "String", "a recipe")]
            await self.station_node.add_method(
                self._id(f"{station}.SelectRecipe"), f"{idx}:SelectRecipe", select, named,
                [_argument("Error", "String", "empty when selected, else why not")],
            )  # fmt: skip

    async def _state_machine(self, station: str, idx: int) -> None:
        """OPC 40100's vision state (edge/bridges/vision_state.py), and with `job_camera` the
        method that starts a job."""
        from asyncua.common.methods import uamethod

        ua, base = self.ua, f"{station}.VisionStateMachine"
        machine = await self.station_node.add_object(self._id(base), f"{idx}:VisionStateMachine")
        self.state_nodes = {
            name: await machine.add_variable(self._id(f"{base}.{name}"), f"{idx}:{name}", value, kind)
            for name, value, kind in (
                ("CurrentState", PREOPERATIONAL, ua.VariantType.String),
                ("ErrorReason", "", ua.VariantType.String),
                ("Since", datetime.now(UTC), ua.VariantType.DateTime),
                ("ActiveJob", "", ua.VariantType.String),
            )
        }

        @uamethod
        async def start_single_job(parent, part: str, product: str) -> str:
            return await self._start_job(part, product)

        if self.jobs is not None:
            await self.station_node.add_method(
                self._id(f"{station}.StartSingleJob"), f"{idx}:StartSingleJob", start_single_job,
                [_argument("PartId", "String", "the part to inspect"),
                 _argument("Product", "String", "its recipe's name; empty: the default recipe")],
                [_argument("Error", "String", "empty when the part is triggered, else why not")],
            )  # fmt: skip

    async def _show_state(self) -> None:
        """Write the vision state when it changed."""
        shown = self._state()
        if shown == self.shown_state:
            return
        self.shown_state = shown
        ua = self.ua
        await self.state_nodes["CurrentState"].write_value(ua.Variant(shown[0], ua.VariantType.String))
        await self.state_nodes["ErrorReason"].write_value(ua.Variant(shown[1], ua.VariantType.String))
        await self.state_nodes["Since"].write_value(ua.Variant(datetime.now(UTC), ua.VariantType.DateTime))
        await self.state_nodes["ActiveJob"].write_value(ua.Variant(self.job or "", ua.VariantType.String))
        self.log.info("vision state %s%s", shown[0], f": {shown[1]}" if shown[1] else "")

    def _state(self) -> tuple[str, str]:
        served = {name: state for name, state in self.camera_states.items() if self.link.serves(name)}
        heard = not math.isinf(self.last_heard)  # before the first heartbeat: Preoperational
        return vision_state(self.alive if heard else None, served, self.job, self.stopping)

    async def _start_job(self, part: str, product: str) -> str:
        """Trigger the job camera's next part, if the vision system is Ready; else say why not."""
        state, why = self._state()
        if state != READY:
            waiting = f" (part {self.job} awaits its result)" if state == BUSY else ""
            return f"the vision system is {state}{waiting}{': ' + why if why else ''}"
        if product and not is_name(product):
            return f"Product must be a recipe's name ({NAME_MEANING}) or empty"
        if product and self.link.recipes and product not in self.link.recipes:
            return f"unknown recipe {product!r}: this station's recipes are {', '.join(self.link.recipes)}"
        try:
            message = encode_trigger(part, product or None)
        except ProtocolError as exc:
            return f"PartId refused: {exc}"
        assert self.jobs is not None
        try:
            self.jobs.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            return f"camera {self.section.job_camera}'s capture takes no triggers (is it running?)"
        self.job = part
        self.log.info("job %s%s started by an OPC UA client", part, f" ({product})" if product else "")
        await self._show_state()
        return ""

    def _recipes(self) -> str:
        if self.link.control_endpoint is None:
            return json.dumps({"error": "the bridge was not told the worker's control endpoint (--control)"})
        reply = control_request(self.link.control_endpoint, "status", QUERY_TIMEOUT_S * 4)
        if reply is None or not reply.get("ok"):
            return json.dumps({"error": "the worker did not answer" if reply is None else reply.get("error")})
        return json.dumps({"recipes": reply.get("recipes") or [], "selected": reply.get("selected") or {}})

    def _select(self, camera: str, recipe: str) -> str:
        if self.link.control_endpoint is None:
            return "the bridge was not told the worker's control endpoint (--control)"
        if not (is_name(camera) and is_name(recipe)):
            return f"camera and recipe are names ({NAME_MEANING})"
        reply = select_recipe(self.link.control_endpoint, camera, recipe, QUERY_TIMEOUT_S * 4)
        if reply is None:
            return "the worker did not answer"
        if not reply.get("ok"):
            return str(reply.get("error"))
        self.log.info("recipe %s selected for camera %s by an OPC UA client", recipe, camera)
        return ""

    def _results_since(self, camera: str, epoch: int, seq: int) -> str:
        """The station's verdicts of `camera` after (epoch, seq), from the publisher (blocking)."""
        if self.link.query_endpoint is None:
            return json.dumps({"error": "the bridge was started without the station's query endpoint"})
        if not self.link.serves(camera):
            return json.dumps({"error": f"no camera {camera!r} at station {self.link.station}"})
        if self.alive is False:  # (None: the bridge just started and has not heard yet: ask)
            return json.dumps({"error": "the station is not alive (no heartbeat): ask again later"})
        try:
            reply = request(
                self.link.query_endpoint,
                encode_query(Query(camera, epoch=epoch, after_seq=seq)),
                QUERY_TIMEOUT_S,
                shape=ReplayReply,
            )
        except Exception as exc:  # a bad camera name or an unreachable station: an answer, not a crash
            return json.dumps({"error": str(exc)})
        if reply is None:
            return json.dumps({"error": "the station did not answer"})
        if not reply.get("ok"):
            return json.dumps({"error": str(reply.get("error"))})
        return json.dumps({"epoch": reply.get("epoch"), "complete": reply.get("complete"),
                           "more": reply.get("more", False), "missing": reply.get("missing", []),
                           "results": reply.get("verdicts", [])})  # fmt: skip

    async def _result(self, verdict: VerdictMessage) -> None:
        nodes = await self._camera(verdict.camera)
        values = result_values(verdict, datetime.now(UTC))
        for name, kind in RESULT_FIELDS:
            variant = getattr(self.ua.VariantType, kind)
            await nodes["values"][name].write_value(self.ua.Variant(values[name], variant))
        counts = nodes["counts"]
        counts["Total"] += 1
        counts[str(verdict.verdict.value).capitalize()] += 1
        for name in COUNTERS:
            await nodes["counters"][name].write_value(
                self.ua.Variant(counts[name], self.ua.VariantType.UInt64)
            )
        event = self.events.event
        event.Camera = verdict.camera
        for name, _ in RESULT_FIELDS:
            setattr(event, name, values[name])
        event.Message = self.ua.LocalizedText(f"{verdict.camera} {values['Verdict']} {verdict.frame_id}")
        event.Severity = 100 if values["IsPartGood"] else 500
        await self.events.trigger()
        self.recent[verdict.camera].append(verdict_body(verdict))
        self.published += 1
        if self.job is not None and verdict.camera == self.section.job_camera and verdict.part_id == self.job:
            self.job = None  # the job's result is out: Ready again
            await self._show_state()

    def own_samples(self) -> list[tuple]:
        return [
            ("counter", "edge_opcua_results", "results written and announced (ResultReady)", self.published)
        ]

    # ---- what the frame hands on, written on the address space's loop ------------------------------
    def on_verdict(self, event: Event, verdict: VerdictMessage) -> None:
        self._call(self._result(verdict))
        self.delivered(verdict)

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        self._call(self._heartbeat(heartbeat))

    def on_alive(self, alive: bool) -> None:
        self._call(self._alive(alive))

    async def _alive(self, alive: bool) -> None:
        await self.alive_node.write_value(alive)
        await self._show_state()

    def on_loss(self, camera: str, loss: Loss) -> None:
        self._call(self._lost(camera, loss))

    def close(self) -> None:
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        super().close()

    async def _stop(self) -> None:
        self.stopping = True
        await self._show_state()
        await self.alive_node.write_value(False)
        await self.server.stop()
        if self.jobs is not None:
            self.jobs.close()

    async def _heartbeat(self, heartbeat: Heartbeat) -> None:
        ua = self.ua
        await self.heartbeat_node.write_value(ua.Variant(datetime.now(UTC), ua.VariantType.DateTime))
        for camera, state in heartbeat.cameras.items():
            await self._camera_state(camera, state)
        self.camera_states = dict(heartbeat.cameras)
        await self._show_state()

    async def _camera_state(self, camera: str, state: dict[str, Any]) -> None:
        """A camera's state from a heartbeat, written when it changed."""
        if not self.link.serves(camera):
            return
        nodes = await self._camera(camera)
        shown = (state["state"], state.get("reason"), state["since_utc"])
        if shown == nodes["shown_state"]:
            return
        nodes["shown_state"] = shown
        ua = self.ua
        try:
            since = datetime.fromisoformat(state["since_utc"])
        except ValueError:  # a publisher's text that is not a time: the state still shows
            since = NO_TIME
        values = (state["state"], state.get("reason") or "", since)
        for (name, kind), value in zip(CAMERA_STATE_FIELDS, values, strict=True):
            await nodes["state"][name].write_value(ua.Variant(value, getattr(ua.VariantType, kind)))

    async def _lost(self, camera: str, loss: Loss) -> None:
        """Results the station no longer held: the camera's LostResults and a ResultsLost event."""
        ua, count = self.ua, loss.count or 0
        nodes = await self._camera(camera)
        nodes["counts"]["LostResults"] += count
        await nodes["counters"]["LostResults"].write_value(
            ua.Variant(nodes["counts"]["LostResults"], ua.VariantType.UInt64)
        )
        event = self.lost_events.event
        event.Camera, event.Epoch, event.FromSeq = camera, loss.epoch, loss.from_seq
        event.ToSeq, event.Count = loss.to_seq or 0, count
        event.Message = ua.LocalizedText(str(loss))
        event.Severity = LOST_SEVERITY
        await self.lost_events.trigger()


def _argument(name: str, kind: str, description: str):
    """A named, described method argument (what a client's browser shows)."""
    from asyncua import ua

    argument = ua.Argument()
    argument.Name = name
    argument.DataType = ua.NodeId(getattr(ua.ObjectIds, kind))
    argument.ValueRank = -1
    argument.Description = ua.LocalizedText(description)
    return argument


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge")
    except PackageNotFoundError:
        return "unknown"


def make_certificate(key_path: Path, cert_path: Path, host: str, uri: str, client: bool) -> None:
    """A self-signed application certificate (DER) and its key (PEM) for the server or a client."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    use = (
        [ExtendedKeyUsageOID.CLIENT_AUTH]
        if client
        else [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    for path in (key_path, cert_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(setup_self_signed_certificate(key_path, cert_path, uri, host, use, {"commonName": uri}))
    key_path.chmod(0o600)


def _options(parser: argparse.ArgumentParser) -> None:
    chores = parser.add_argument_group("chores (each does its work and exits)")
    chores.add_argument(
        "--make-certificate", nargs=2, metavar=("KEY", "CERT"), type=Path,
        help="write a self-signed certificate and key (the server's, or with --client-uri a client's)",
    )  # fmt: skip
    chores.add_argument("--client-uri", help="with --make-certificate: the client application's URI")
    chores.add_argument(
        "--add-user", metavar="NAME", help="add a user to --users (password from standard input)"
    )


def _chores(args: argparse.Namespace) -> bool:
    """--make-certificate and --add-user; True when one ran."""
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO is per request
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OneLine())
    if args.make_certificate:
        key, cert = args.make_certificate
        uri = args.client_uri or APPLICATION_URI
        make_certificate(key, cert, socket.gethostname(), uri, client=args.client_uri is not None)
        log.info("wrote %s and %s for %s", cert, key, uri)
        return True
    if not args.add_user:
        return False
    if args.users_file is None:
        raise UsageError("--add-user needs --users FILE")
    users = Path(args.users_file)
    password = (
        getpass.getpass(f"password for {args.add_user}: ") if sys.stdin.isatty() else sys.stdin.readline()
    )
    password = password.rstrip("\n")
    if len(password) < 8 or ":" in args.add_user:
        raise UsageError("a password has at least 8 characters and a user name no ':'")
    existing = users.read_text() if users.exists() else ""
    lines = [line for line in existing.splitlines() if not line.startswith(f"{args.add_user}:")]
    users.write_text("\n".join([*lines, f"{args.add_user}:{hash_password(password)}"]) + "\n")
    users.chmod(0o600)
    return True


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: bridge_main(OpcUaBridge, argv, __doc__.split("\n\n")[0], _options, _chores))


if __name__ == "__main__":
    sys.exit(main())
