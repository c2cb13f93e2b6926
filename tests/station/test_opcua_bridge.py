"""edge-opcua-bridge as its own process, read by an asyncua client as a plant's MES would write
one: Basic256Sha256 SignAndEncrypt with certificates made by the documented command, the address
space browsed, the last result read, data changes and ResultReady events subscribed; every one of
200 verdicts reaches the client exactly once although the bridge and the station's publisher are
restarted mid-run; an untrusted client is refused; hostile input costs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq
from bridge_kit import Station, free_port

asyncua = pytest.importorskip("asyncua", reason="asyncua not installed (pip install 'edge[opcua]')")
from asyncua import Client, ua  # noqa: E402

NAMESPACE = "urn:edge:machine-vision"
CLIENT_URI = "urn:edge:test-mes"


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge.bridges.opcua", *arguments], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> Path:
    """Server and client certificates made by the bridge's own command; the client's trusted."""
    folder = tmp_path_factory.mktemp("pki")
    assert (
        run_cli("--make-certificate", str(folder / "server.pem"), str(folder / "server.der")).returncode == 0
    )
    for name in ("client", "stranger"):
        made = run_cli("--make-certificate", str(folder / f"{name}.pem"), str(folder / f"{name}.der"),
                       "--client-uri", CLIENT_URI)  # fmt: skip
        assert made.returncode == 0, made.stderr
    (folder / "trust").mkdir()
    (folder / "trust" / "client.der").write_bytes((folder / "client.der").read_bytes())
    return folder


def start_bridge(station: Station, pki: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "edge.bridges.opcua", station.pub, "--station", "line1",
        "--query", station.query, "--camera", "cam1", "--endpoint", f"opc.tcp://127.0.0.1:{port}/edge/",
        "--certificate", str(pki / "server.der"), "--private-key", str(pki / "server.pem"),
        "--trust", str(pki / "trust"), "--alive-timeout", "1", *extra,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ})


async def connect(port: int, pki: Path, who: str = "client") -> Client:
    client = Client(f"opc.tcp://127.0.0.1:{port}/edge/", timeout=4)
    client.application_uri = CLIENT_URI
    await client.set_security_string(
        f"Basic256Sha256,SignAndEncrypt,{pki / f'{who}.der'},{pki / f'{who}.pem'},{pki / 'server.der'}"
    )
    await client.connect()
    return client


async def connect_when_up(port: int, pki: Path) -> Client:
    """A session once the bridge answers (it starts in a subprocess)."""
    for _ in range(100):
        try:
            return await connect(port, pki)
        except Exception:
            await asyncio.sleep(0.2)
    raise AssertionError(f"the bridge on port {port} did not answer")


class Mes:
    """What a careful MES client does: ResultReady events, and after a reconnect or a jump in Seq
    the results it missed through GetResultsSince; results kept by frame id."""

    def __init__(self) -> None:
        self.results: dict[str, dict] = {}
        self.events: list[str] = []  # frame ids, in the order events came
        self.changes = 0
        self.last: tuple[int, int] = (0, 0)  # (epoch, seq) of the newest result handled
        self.pages = 0

    def event_notification(self, event) -> None:
        self.events.append(event.ResultId)
        self.keep({"frame_id": event.ResultId, "verdict": event.Verdict, "part_id": event.PartId,
                   "score": event.Score, "epoch": event.Epoch, "seq": event.Seq,
                   "defect_area_px": event.DefectAreaPx, "bank_version": event.BankVersion},
                  in_order=True)  # fmt: skip

    def datachange_notification(self, node, value, data) -> None:
        self.changes += 1

    def keep(self, result: dict, in_order: bool = False) -> None:
        """Keep a result; the position to ask GetResultsSince from moves only past results handled
        in order: an event after a jump in Seq (or a new Epoch) leaves it, so the gap is fetched."""
        self.results.setdefault(result["frame_id"], result)
        position = (result["epoch"], result["seq"])
        next_in_order = self.last == (0, 0) or position == (self.last[0], self.last[1] + 1)
        if position > self.last and (next_in_order or not in_order):
            self.last = position

    async def session(self, port: int, pki: Path) -> Client:
        client = await connect(port, pki)
        idx = await client.get_namespace_index(NAMESPACE)
        station = client.get_node(ua.NodeId("line1", idx))
        subscription = await client.create_subscription(20, self)
        event_type = await client.nodes.root.get_child(
            ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"]
        )
        await subscription.subscribe_events(station, event_type)
        await subscription.subscribe_data_change(
            client.get_node(ua.NodeId("line1.cam1.Result.ResultId", idx))
        )
        await self.catch_up(station, idx)
        return client

    async def catch_up(self, station, idx: int) -> None:
        """GetResultsSince from the last result handled, page after page while "more"; an
        error (the station not alive yet) is asked again, as the docs say."""
        errors = 0
        while True:
            epoch, seq = (ua.Variant(value, ua.VariantType.UInt64) for value in self.last)
            since = ua.NodeId("line1.GetResultsSince", idx)
            reply = json.loads(await station.call_method(since, "cam1", epoch, seq))
            if "error" in reply:
                errors += 1
                assert errors < 100, reply
                await asyncio.sleep(0.2)
                continue
            for body in reply.get("results", []):
                self.keep(body)
            self.pages += 1
            if not reply.get("more"):
                return


async def listening(port: int) -> None:
    """Until the bridge accepts TCP connections on `port` (it starts in about 2 s)."""
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            await asyncio.sleep(0.2)


async def alive(client: Client) -> bool:
    try:
        await asyncio.wait_for(client.nodes.server_state.read_value(), 2)
        return True
    except Exception:
        return False


def test_every_verdict_reaches_the_mes_once_across_bridge_and_publisher_restarts(tmp_path, certificates):
    station = Station(tmp_path)
    port = free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(station, certificates, port, log)

    async def scenario() -> tuple[Mes, dict]:
        nonlocal bridge
        mes = Mes()
        client = None
        for _ in range(100):  # the bridge is up once it answers
            try:
                client = await mes.session(port, certificates)
                break
            except Exception:
                await asyncio.sleep(0.2)
        assert client is not None, log.read_text()[-2000:]
        idx = await client.get_namespace_index(NAMESPACE)
        browsed = {
            (await n.read_browse_name()).Name
            for n in await client.get_node(ua.NodeId("line1", idx)).get_children()
        }
        assert {"VisionAlive", "LastHeartbeatTime", "cam1", "GetResultsSince", "GetResult"} <= browsed
        sent = []
        for index in range(200):
            sent.append(station.send(index))
            await asyncio.sleep(0.02)
            if index == 70:  # the bridge is restarted: the MES reconnects and catches up
                bridge.terminate()
                bridge.wait(15)
                station.send(1000)  # published while no bridge listens
                sent.append("frame-1000")
                bridge = start_bridge(station, certificates, port, log)
            if index == 140:  # the station's publisher restarts: a new epoch
                station.restart_publisher()
            if not await alive(client):
                for _ in range(100):
                    try:
                        client = await mes.session(port, certificates)
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
        for _ in range(100):
            if set(sent) <= set(mes.results):
                break
            await asyncio.sleep(0.1)
        last = {}
        for name in ("ResultId", "Verdict", "PartId", "Score", "IsPartGood", "Epoch", "Seq", "DefectAreaPx"):
            last[name] = await client.get_node(ua.NodeId(f"line1.cam1.Result.{name}", idx)).read_value()
        last["alive"] = await client.get_node(ua.NodeId("line1.VisionAlive", idx)).read_value()
        last["total"] = await client.get_node(ua.NodeId("line1.cam1.Counters.Total", idx)).read_value()
        await client.disconnect()
        return mes, {"sent": sent, **last}

    try:
        mes, seen = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
        station.close()
    sent = seen["sent"]
    assert set(mes.results) == set(sent), sorted(set(sent) - set(mes.results))[:10]
    assert len(mes.events) == len(set(mes.events)), "an event came twice"
    assert len(mes.events) >= 150  # most came live; the rest through GetResultsSince
    first = mes.results["frame-0000"]
    assert first["verdict"] == "NOK" and first["part_id"] == "P0" and first["bank_version"] == "v0001"
    assert seen["ResultId"] == "frame-0199" and seen["Verdict"] == "OK" and seen["PartId"] == "P199"
    assert (
        seen["Score"] == pytest.approx(0.699) and seen["IsPartGood"] is True and seen["DefectAreaPx"] == 199
    )
    assert seen["alive"] is True and seen["total"] >= 50 and mes.changes >= 50


def test_an_untrusted_client_is_refused_and_hostile_input_is_survived(tmp_path, certificates):
    station = Station(tmp_path)
    port, rogue_port = free_port(), free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(station, certificates, port, log)
    context = zmq.Context()
    rogue = context.socket(zmq.PUB)  # a broken or malicious "station" the second bridge listens to
    rogue.bind(f"ipc://{tmp_path}/rogue")
    fake = type("Fake", (), {"pub": f"ipc://{tmp_path}/rogue", "query": f"ipc://{tmp_path}/nobody"})()
    victim = start_bridge(fake, certificates, rogue_port, tmp_path / "victim.log")

    async def first_session(at: int) -> Client:
        for _ in range(100):
            try:
                return await connect(at, certificates)
            except Exception:
                await asyncio.sleep(0.2)
        raise AssertionError(log.read_text()[-2000:])

    async def scenario() -> str:
        client = await first_session(port)
        with pytest.raises(Exception):  # noqa: B017 - refused at the secure channel, whatever asyncua calls it
            await connect(port, certificates, who="stranger")
        anonymous = Client(f"opc.tcp://127.0.0.1:{port}/edge/", timeout=4)
        with pytest.raises(Exception):  # noqa: B017 - no unsecured endpoint, no anonymous session
            await anonymous.connect()
            await anonymous.nodes.server_state.read_value()
        idx = await client.get_namespace_index(NAMESPACE)
        station_node = client.get_node(ua.NodeId("line1", idx))
        reply = await station_node.call_method(
            ua.NodeId("line1.GetResultsSince", idx), "no such camera!",
            ua.Variant(0, ua.VariantType.UInt64), ua.Variant(0, ua.VariantType.UInt64),
        )  # fmt: skip
        assert "error" in json.loads(reply)
        assert await station_node.call_method(ua.NodeId("line1.GetResult", idx), "nothing") == ""
        station.send(1)
        await asyncio.sleep(1)
        found = await station_node.call_method(ua.NodeId("line1.GetResult", idx), "frame-0001")
        await client.disconnect()
        victim_client = await first_session(rogue_port)
        for garbage in (
            [b"verdict.line1.cam1.", b"{not json"], [b"verdict.line1.cam1."], [b"heartbeat.line1.", b"[]"],
            [b"verdict.line1.cam1.", json.dumps({"schema": 3, "station": "line1"}).encode()],
        ):  # fmt: skip
            rogue.send_multipart(garbage)
        await asyncio.sleep(1)
        vidx = await victim_client.get_namespace_index(NAMESPACE)
        assert await victim_client.get_node(ua.NodeId("line1.VisionAlive", vidx)).read_value() is False
        await victim_client.disconnect()
        return found

    try:
        found = asyncio.run(scenario())
        assert json.loads(found)["frame_id"] == "frame-0001"
        assert bridge.poll() is None and victim.poll() is None, (tmp_path / "victim.log").read_text()[-2000:]
        assert "Traceback" not in log.read_text()  # the refused stranger is one line, not a library trace
        assert "refused message from the station" in (tmp_path / "victim.log").read_text()
    finally:
        for process in (bridge, victim):
            process.terminate()
            process.wait(15)
        rogue.close()
        context.destroy(linger=0)
        station.close()


def test_usage_mistakes_exit_2_without_a_traceback(tmp_path, certificates):
    for extra in (
        ["--certificate", str(tmp_path / "missing.der"), "--private-key", str(certificates / "server.pem"),
         "--trust", str(certificates / "trust")],
        ["--certificate", str(certificates / "server.der"), "--private-key", str(certificates / "server.pem"),
         "--trust", str(tmp_path / "no-folder")],
        [],
    ):  # fmt: skip
        result = run_cli("ipc:///tmp/x", "--station", "s", *extra)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_with_a_users_file_a_session_needs_the_right_password(tmp_path, certificates):
    """--users: a trusted certificate is not enough; the user name and password must match."""
    users = tmp_path / "users"
    added = subprocess.run(
        [sys.executable, "-m", "edge.bridges.opcua", "--add-user", "mes", "--users", str(users)],
        input="correct horse battery\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert users.read_text().startswith("mes:scrypt$") and "correct horse" not in users.read_text()
    station = Station(tmp_path)
    port = free_port()
    bridge = start_bridge(station, certificates, port, tmp_path / "bridge.log", "--users", str(users))

    async def session(user: str | None, password: str | None) -> bool:
        client = Client(f"opc.tcp://127.0.0.1:{port}/edge/", timeout=4)
        client.application_uri = CLIENT_URI
        keys = f"{certificates / 'client.der'},{certificates / 'client.pem'},{certificates / 'server.der'}"
        await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{keys}")
        if user is not None:
            client.set_user(user)
            client.set_password(password)
        try:
            await client.connect()
        except Exception:
            return False
        await client.disconnect()
        return True

    async def scenario() -> tuple[bool, bool, bool]:
        await listening(port)
        return (
            await session("mes", "correct horse battery"),
            await session("mes", "wrong"),
            await session(None, None),
        )

    try:
        right, wrong, anonymous = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
        station.close()
    assert (right, wrong, anonymous) == (True, False, False)


def test_a_raw_client_that_skips_the_endpoint_check_gets_no_unsecured_channel(tmp_path, certificates):
    """A client that asks for security None without looking at the advertised endpoints (as a
    hostile or careless one does) is refused at OpenSecureChannel: nothing is browsed, read or
    called in plaintext, and the bridge logs one line, no traceback."""
    station = Station(tmp_path)
    port = free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(station, certificates, port, log)

    async def scenario() -> tuple[bool, bool]:
        await listening(port)
        raw = Client(f"opc.tcp://127.0.0.1:{port}/edge/", timeout=4)  # security None
        await raw.connect_socket()
        await raw.send_hello()
        try:
            await raw.open_secure_channel()
            opened = True
        except Exception:
            opened = False
        session = False
        if opened:  # the defect: then an anonymous session reads the address space
            try:
                await raw.create_session()
                await raw.activate_session()
                await raw.nodes.server_state.read_value()
                session = True
            except Exception:
                pass
        raw.disconnect_socket()
        secure = await connect(port, certificates)  # a trusted client still gets in
        await secure.nodes.server_state.read_value()
        await secure.disconnect()
        return opened, session

    try:
        opened, session = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
        station.close()
    output = log.read_text()
    assert (opened, session) == (False, False), output[-2000:]
    assert "refused a client asking for an unsecured channel" in output and "Traceback" not in output


# a 5 s outage runs in every suite; EDGE_LONG_OUTAGES=1 adds a minute and ten minutes
OUTAGES = [5, *([60, 600] if os.environ.get("EDGE_LONG_OUTAGES") == "1" else [])]


@pytest.mark.parametrize("outage_s", OUTAGES)
def test_a_bridge_killed_for_an_outage_costs_the_mes_no_result(tmp_path, certificates, outage_s):
    """edge-opcua-bridge SIGKILLed for `outage_s` at 10 parts/s: the MES reconnects as the docs
    say (GetResultsSince from its last result, page by page) and holds every result."""
    station = Station(tmp_path)
    port = free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(station, certificates, port, log)
    sent: list[str] = []

    async def feed(stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent.append(station.send(len(sent)))
            await asyncio.sleep(0.1)

    async def reconnect(mes: Mes) -> Client:
        for _ in range(600):
            try:
                return await mes.session(port, certificates)
            except Exception:
                await asyncio.sleep(0.2)
        raise AssertionError(log.read_text()[-2000:])

    async def scenario() -> Mes:
        nonlocal bridge
        mes = Mes()
        client = await reconnect(mes)
        stop = asyncio.Event()
        feeding = asyncio.create_task(feed(stop))
        await asyncio.sleep(3)
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(10)
        await asyncio.sleep(outage_s)
        bridge = start_bridge(station, certificates, port, log)
        client = await reconnect(mes)
        await asyncio.sleep(3)
        stop.set()
        await feeding
        await asyncio.sleep(1)
        idx = await client.get_namespace_index(NAMESPACE)
        await mes.catch_up(client.get_node(ua.NodeId("line1", idx)), idx)
        await client.disconnect()
        return mes

    try:
        mes = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
        station.close()
    lost = len(set(sent) - set(mes.results))
    doubled = len(mes.events) - len(set(mes.events))
    print(f"\nOPC UA bridge down {outage_s} s at 10 parts/s: sent {len(sent)}, delivered "
          f"{len(set(sent) & set(mes.results))}, lost {lost}, doubled events {doubled}, "
          f"GetResultsSince pages {mes.pages}")  # fmt: skip
    assert lost == 0 and doubled == 0
    assert "lost" not in log.read_text()


def test_get_results_since_answers_at_once_while_the_station_is_down(tmp_path, certificates):
    """While the station is down an MES following the reconnect recipe gets an error at once, not a
    blocked session that asyncua's watchdog then drops."""
    station = Station(tmp_path)
    port = free_port()
    log = tmp_path / "bridge.log"
    bridge = start_bridge(station, certificates, port, log)

    async def scenario() -> tuple[dict, float, bool]:
        client = await connect_when_up(port, certificates)
        idx = await client.get_namespace_index(NAMESPACE)
        alive = client.get_node(ua.NodeId("line1.VisionAlive", idx))
        station.close()  # the station goes away
        for _ in range(100):
            if await alive.read_value() is False:
                break
            await asyncio.sleep(0.1)
        started = time.monotonic()
        reply = await client.get_node(ua.NodeId("line1", idx)).call_method(
            ua.NodeId("line1.GetResultsSince", idx), "cam1",
            ua.Variant(1, ua.VariantType.UInt64), ua.Variant(1, ua.VariantType.UInt64),
        )  # fmt: skip
        took = time.monotonic() - started
        still = await alive.read_value() is False  # the session is still served
        await client.disconnect()
        return json.loads(reply), took, still

    try:
        reply, took, served = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
    assert "not alive" in reply["error"] and took < 0.5 and served, (reply, took)


def test_a_camera_state_reaches_the_address_space(tmp_path, certificates):
    """A capture's report that its camera is gone shows on <station>.<camera>.CameraState with the
    reason, and streaming again once it is back."""
    station = Station(tmp_path)
    port = free_port()
    bridge = start_bridge(station, certificates, port, tmp_path / "bridge.log")

    async def shown(client, idx, wanted: str) -> tuple[str, str]:
        state = client.get_node(ua.NodeId("line1.cam1.CameraState", idx))
        reason = client.get_node(ua.NodeId("line1.cam1.CameraStateReason", idx))
        for _ in range(100):
            with contextlib.suppress(ua.UaStatusCodeError):  # no heartbeat yet: waiting for data
                if await state.read_value() == wanted:
                    return wanted, await reason.read_value()
            await asyncio.sleep(0.1)
        raise AssertionError(f"CameraState never became {wanted}")

    async def scenario() -> list[tuple[str, str]]:
        client = await connect_when_up(port, certificates)
        idx = await client.get_namespace_index(NAMESPACE)
        seen = []
        station.report_camera("cam1", "gone", "control connection lost")
        seen.append(await shown(client, idx, "gone"))
        station.report_camera("cam1", "streaming")
        seen.append(await shown(client, idx, "streaming"))
        await client.disconnect()
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        bridge.terminate()
        bridge.wait(15)
        station.close()
    assert seen == [("gone", "control connection lost"), ("streaming", "")]


def test_a_client_lists_recipes_and_selects_one_that_then_judges_the_cameras_frames(
    tmp_path, certificates, fitted_model, synthetic_category
):
    """OPC 40100's recipe management as far as the station has it: ListRecipes from the worker,
    SelectRecipe (offered only with select_recipes) changing which recipe judges cam1's frames
    that name no product; an unknown recipe and a hostile name are refused with their reason."""
    from edge.client import Subscriber
    from edge.imageio import read_image
    from edge.pipeline.inspection import Bank, RecipeBook
    from edge.pipeline.worker import Worker, WorkerSettings
    from edge.protocol import FrameHeader, encode_frame

    station = Station(tmp_path)
    recipes = RecipeBook([Bank(fitted_model, 1e9, "b", "v1", recipe="whole"),
                          Bank(fitted_model, 1e9, "b", "v1", recipe="strict")])  # fmt: skip
    control = f"ipc://{tmp_path}/control"
    settings = WorkerSettings("line1", f"ipc://{tmp_path}/frames", station.settings.results_endpoint,
                              control_endpoint=control)  # fmt: skip
    worker = Worker(recipes, settings, station.context)
    stop = threading.Event()
    working = threading.Thread(target=worker.run, args=(stop,))
    working.start()
    port, plain_port = free_port(), free_port()
    bridge = start_bridge(station, certificates, port, tmp_path / "bridge.log", "--control", control,
                          "--select-recipes")  # fmt: skip
    plain = start_bridge(station, certificates, plain_port, tmp_path / "plain.log", "--control", control)
    subscriber = Subscriber(station.pub, "line1", topics=("verdict",), context=station.context)
    sender = station.context.socket(zmq.PUSH)
    sender.connect(settings.frames_endpoint)
    image = read_image(synthetic_category.train[0])

    def judged_by() -> str | None:
        header = FrameHeader(station="line1", camera="cam1", seq=0, frame_id=f"f{time.monotonic_ns()}",
                             capture_utc="2026-12-07T00:00:00Z", capture_monotonic_ns=time.monotonic_ns(),
                             height=image.shape[0], width=image.shape[1], channels=3)  # fmt: skip
        sender.send_multipart(encode_frame(header, image))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            event = subscriber.receive(0.5)
            if event is not None and event.verdict is not None and event.verdict.frame_id == header.frame_id:
                return event.verdict.recipe
        return None

    async def scenario() -> tuple:
        client = await connect_when_up(port, certificates)
        idx = await client.get_namespace_index(NAMESPACE)
        node = client.get_node(ua.NodeId("line1", idx))
        listed = json.loads(await node.call_method(ua.NodeId("line1.ListRecipes", idx)))
        before = await asyncio.get_running_loop().run_in_executor(None, judged_by)
        chosen = await node.call_method(ua.NodeId("line1.SelectRecipe", idx), "cam1", "strict")
        unknown = await node.call_method(ua.NodeId("line1.SelectRecipe", idx), "cam1", "zzz")
        hostile = await node.call_method(ua.NodeId("line1.SelectRecipe", idx), "cam1\x00; rm", "x" * 500)
        after = await asyncio.get_running_loop().run_in_executor(None, judged_by)
        relisted = json.loads(await node.call_method(ua.NodeId("line1.ListRecipes", idx)))
        await client.disconnect()
        other = await connect_when_up(plain_port, certificates)
        oidx = await other.get_namespace_index(NAMESPACE)
        names = {
            (await n.read_browse_name()).Name
            for n in await other.get_node(ua.NodeId("line1", oidx)).get_children()
        }
        await other.disconnect()
        return listed, before, chosen, unknown, hostile, after, relisted, names

    try:
        listed, before, chosen, unknown, hostile, after, relisted, names = asyncio.run(scenario())
    finally:
        for process in (bridge, plain):
            process.terminate()
            process.wait(15)
        stop.set()
        working.join(10)
        sender.close()
        subscriber.socket.close()
        station.close()
    assert listed == {"recipes": ["whole", "strict"], "selected": {}}
    assert (before, chosen, after) == ("whole", "", "strict")
    assert unknown == "unknown recipe 'zzz': this station's recipes are whole, strict"
    assert "camera and recipe are names" in hostile
    assert relisted["selected"] == {"cam1": "strict"}
    assert "ListRecipes" in names and "SelectRecipe" not in names  # without select_recipes: read only


def test_a_client_starts_jobs_in_ready_and_follows_the_vision_state(
    tmp_path, certificates, fitted_model, synthetic_category
):
    """OPC 40100's vision state and StartSingleJob on real parts (capture of a triggered synthetic
    camera, publisher, worker with two recipes, the bridge in this process): Ready, Busy while a
    job started here awaits its result, a second job refused while Busy, a part the worker never
    judged answered TIMEOUT by its deadline (back to Ready), jobs judged by the product they name;
    an unknown recipe, a hostile part id and a bridge without job_camera refused."""
    from edge.bridges.base import StationLink
    from edge.bridges.opcua import OpcUaBridge
    from edge.client import Subscriber
    from edge.config import OpcUaBridgeConfig
    from edge.pipeline.capture import Capture, CaptureSettings
    from edge.pipeline.inspection import Bank, RecipeBook
    from edge.pipeline.publisher import Publisher, PublisherSettings
    from edge.pipeline.sources import SyntheticSource
    from edge.pipeline.worker import Worker, WorkerSettings

    ipc = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub", "trig")}
    context = zmq.Context()
    publisher = Publisher(PublisherSettings("line1", ipc["results"], ipc["pub"], heartbeat_s=0.2), context)
    capture = Capture(
        SyntheticSource(160, defect_rate=0.5, seed=3),
        CaptureSettings("line1", "cam1", ipc["frames"], trigger="triggered", deadline_ms=1500,
                        results_endpoint=ipc["results"], trigger_endpoint=ipc["trig"]),
        context,
    )  # fmt: skip
    book = RecipeBook([Bank(fitted_model, 1e9, "b", "v1", recipe="whole"),
                       Bank(fitted_model, 1e9, "b", "v1", recipe="strict")])  # fmt: skip
    worker = Worker(book, WorkerSettings("line1", ipc["frames"], ipc["results"]), context)
    port = free_port()
    section = OpcUaBridgeConfig(
        endpoint_url=f"opc.tcp://127.0.0.1:{port}/edge/", certificate=str(certificates / "server.der"),
        private_key=str(certificates / "server.pem"), trust_dir=str(certificates / "trust"),
        alive_timeout_s=1.0, job_camera="cam1",
    )  # fmt: skip
    link = StationLink("line1", ipc["pub"], triggers={"cam1": ipc["trig"]}, recipes=("whole", "strict"))
    bridge = OpcUaBridge(link, section)
    stop, stop_worker = threading.Event(), threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,)) for p in (publisher, capture, bridge)]
    for thread in threads:
        thread.start()
    subscriber = Subscriber(ipc["pub"], "line1", topics=("verdict",), context=context)
    verdicts: dict[str, object] = {}

    def verdict_of(part: str, timeout_s: float = 20):
        deadline = time.monotonic() + timeout_s
        while part not in verdicts and time.monotonic() < deadline:
            event = subscriber.receive(0.2)
            if event is not None and event.verdict is not None:
                verdicts[event.verdict.part_id] = event.verdict
        return verdicts.get(part)

    class States:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def datachange_notification(self, node, value, data) -> None:
            self.seen.append(value)

    async def scenario() -> dict:
        loop = asyncio.get_running_loop()
        client = await connect_when_up(port, certificates)
        idx = await client.get_namespace_index(NAMESPACE)
        node = client.get_node(ua.NodeId("line1", idx))
        current = client.get_node(ua.NodeId("line1.VisionStateMachine.CurrentState", idx))
        states = States()
        subscription = await client.create_subscription(10, states)
        await subscription.subscribe_data_change(current)
        for _ in range(100):
            if await current.read_value() == "Ready":
                break
            await asyncio.sleep(0.1)
        got: dict = {"ready": await current.read_value()}
        start = ua.NodeId("line1.StartSingleJob", idx)
        got["unjudged"] = await node.call_method(start, "OPC-000", "")  # no worker yet: no result soon
        got["busy_state"] = await current.read_value()
        got["active"] = await client.get_node(
            ua.NodeId("line1.VisionStateMachine.ActiveJob", idx)
        ).read_value()
        got["second"] = await node.call_method(start, "OPC-00X", "")
        got["timeout"] = await loop.run_in_executor(None, verdict_of, "OPC-000")
        working = threading.Thread(target=worker.run, args=(stop_worker,))
        working.start()
        got["worker"] = working
        for _ in range(50):
            if await current.read_value() == "Ready":
                break
            await asyncio.sleep(0.1)
        got["after_timeout"] = await current.read_value()
        got["jobs"] = []
        for n, product in enumerate(("whole", "strict", "", "strict"), 1):
            for _ in range(100):  # each job once the last one's result is out
                if await current.read_value() == "Ready":
                    break
                await asyncio.sleep(0.05)
            said = await node.call_method(start, f"OPC-{n:03d}", product)
            judged = await loop.run_in_executor(None, verdict_of, f"OPC-{n:03d}")
            got["jobs"].append((said, judged.verdict.value, judged.recipe))
        got["unknown"] = await node.call_method(start, "OPC-100", "zzz")
        got["hostile"] = await node.call_method(start, "P\x00" + "x" * 5000, "")
        await asyncio.sleep(0.5)
        got["states"] = list(states.seen)
        await client.disconnect()
        return got

    try:
        got = asyncio.run(scenario())
    finally:
        stop.set()
        stop_worker.set()
        for thread in threads:
            thread.join(15)
        if "got" in locals():
            got["worker"].join(15)
        subscriber.socket.close()
        capture.close()
        context.destroy(linger=0)
    assert got["ready"] == "Ready"
    assert got["unjudged"] == "" and got["busy_state"] == "Busy" and got["active"] == "OPC-000"
    assert got["second"] == "the vision system is Busy (part OPC-000 awaits its result)"
    assert got["timeout"] is not None and got["timeout"].verdict.value == "TIMEOUT"  # answered, never left
    assert got["after_timeout"] == "Ready"
    assert [(said, recipe) for said, _, recipe in got["jobs"]] == [
        ("", "whole"), ("", "strict"), ("", "whole"), ("", "strict")]  # fmt: skip
    assert got["unknown"] == "unknown recipe 'zzz': this station's recipes are whole, strict"
    assert got["hostile"].startswith("PartId refused")
    assert got["states"][0] in ("Preoperational", "Ready") and "Busy" in got["states"]
    assert "OPC-100" not in verdicts  # a refused job triggers nothing
