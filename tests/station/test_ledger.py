import threading
import time

import pytest
import zmq
from station_kit import subscribed, wait_until

from edge.client import Subscriber
from edge.imageio import read_image
from edge.pipeline.camera_state import Frame
from edge.pipeline.capture import Capture, CaptureSettings
from edge.pipeline.inspection import Bank
from edge.pipeline.ledger import Ledger
from edge.pipeline.publisher import Publisher, PublisherSettings
from edge.pipeline.sources import SyntheticSource
from edge.pipeline.worker import Worker, WorkerSettings
from edge.protocol import FrameHeader, Verdict, VerdictMessage, encode_expect, encode_result


def header(frame_id: str, deadline_ms: float | None = 100) -> FrameHeader:
    return FrameHeader(
        station="s",
        camera="c",
        seq=0,
        frame_id=frame_id,
        capture_utc="t",
        capture_monotonic_ns=0,
        height=1,
        width=1,
        channels=1,
        trigger="triggered",
        deadline_ms=deadline_ms,
    )


def test_ledger_answers_each_frame_once():
    ledger = Ledger(default_deadline_ms=1000, grace_ms=0)
    ledger.expect(header("a"), now_s=0.0)
    ledger.expect(header("b", None), now_s=0.0)
    assert ledger.answer("a") is True
    ledger.published("a", triggered=True)
    assert ledger.answer("a") is False  # a duplicate
    assert [h.frame_id for h in ledger.overdue(0.5)] == []
    assert [h.frame_id for h in ledger.overdue(1.01)] == ["b"]  # the default deadline applies
    ledger.published("b", triggered=True)  # its TIMEOUT went out
    assert ledger.answer("b") is False and ledger.late == 2
    assert ledger.answer("c") is True  # free-run frames are never announced
    ledger.published("c", triggered=False)
    ledger.expect(header("c"), now_s=2.0)  # an announcement overtaken by its verdict
    assert ledger.overdue(10.0) == []


def test_a_lost_worker_turns_frames_in_flight_into_timeouts_and_nothing_twice(
    tmp_path, fitted_model, synthetic_category
):
    """Triggered parts: the worker dies mid-stream and is restarted; every part gets exactly one
    verdict, OK/NOK for those scored in time and TIMEOUT for the rest."""
    context = zmq.Context()
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("frames", "results", "pub")}
    publisher = Publisher(
        PublisherSettings("s", endpoints["results"], endpoints["pub"], heartbeat_s=0.1), context
    )
    stop_publisher = threading.Event()
    publishing = threading.Thread(target=publisher.run, args=(stop_publisher,), daemon=True)
    publishing.start()
    subscriber = Subscriber(endpoints["pub"], "s", context=context)
    assert subscriber.receive(10) is not None
    bank = Bank(fitted_model, threshold=1e9, bank_id="b", version="1")
    image = read_image(synthetic_category.test[0].path)
    fitted_model.score([image])  # warm: the first call's set-up must not eat the deadline
    capture = Capture(
        SyntheticSource(count=0),
        CaptureSettings(
            "s",
            "c",
            endpoints["frames"],
            trigger="triggered",
            deadline_ms=2000,
            results_endpoint=endpoints["results"],
        ),
        context,
    )

    worker = Worker(
        bank, WorkerSettings("s", endpoints["frames"], endpoints["results"], max_batch=1), context
    )
    for _ in range(5):
        capture.offer(Frame.now(image))
    while worker.counters.verdicts_out < 5:
        worker.step()
    worker.close()  # the worker is gone: the next frames wait, unanswered, past their deadline
    for _ in range(5):
        capture.offer(Frame.now(image))
    deadline = time.monotonic() + 10
    while publisher.counters.timeouts < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # the publisher answers the waiting frames TIMEOUT once their deadline passes
    restarted = Worker(bank, WorkerSettings("s", endpoints["frames"], endpoints["results"]), context)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and restarted.counters.verdicts_out < 5:
        restarted.step()  # frames that still reach it are scored too late: their verdicts must be dropped

    verdicts: dict[str, list[Verdict]] = {}
    end = time.monotonic() + 5
    while time.monotonic() < end:
        event = subscriber.receive(0.2)
        if event is not None and event.verdict is not None:
            verdicts.setdefault(event.verdict.frame_id, []).append(event.verdict.verdict)
    stop_publisher.set()
    publishing.join(5)
    restarted.close()
    capture.close()
    subscriber.socket.close()
    context.destroy(linger=0)

    sent = [capture.frame_id(seq) for seq in range(10)]
    assert sorted(verdicts) == sorted(sent)
    assert all(len(v) == 1 for v in verdicts.values())
    assert [verdicts[f][0] for f in sent[:5]] == [Verdict.OK] * 5
    assert [verdicts[f][0] for f in sent[5:]] == [Verdict.TIMEOUT] * 5
    assert publisher.counters.timeouts == 5
    assert publisher.ledger.late == restarted.counters.verdicts_out


def test_stopping_publisher_answers_announced_parts_it_never_got_a_verdict_for(tmp_path):
    """Shutdown with a part announced but unanswered (its worker gone): ERROR, not silence."""
    context = zmq.Context()
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("results", "pub")}
    publisher = Publisher(
        PublisherSettings("s", endpoints["results"], endpoints["pub"], default_deadline_ms=60_000), context
    )
    subscriber = Subscriber(endpoints["pub"], "s", topics=("verdict", "heartbeat"), context=context)
    announce = context.socket(zmq.PUSH)
    announce.connect(endpoints["results"])
    announce.send_multipart(encode_expect(header("part-1", deadline_ms=None)))
    stop = threading.Event()
    running = threading.Thread(target=publisher.run, args=(stop,))
    running.start()
    subscribed(subscriber)
    wait_until(lambda: publisher.ledger.awaits("part-1"), 10, "the announcement")  # due in a minute
    stop.set()
    running.join(10)
    event = subscriber.receive(2)
    while event is not None and event.heartbeat is not None:
        event = subscriber.receive(2)
    announce.close()
    subscriber.socket.close()
    context.destroy(linger=0)
    assert event is not None and event.verdict.frame_id == "part-1"
    assert event.verdict.verdict == Verdict.ERROR and "edge stopped" in event.verdict.error


def test_a_restarted_publisher_takes_over_the_ledger_from_its_journal(tmp_path):
    """Parts announced to a publisher that is then killed (no clean close) are awaited by the next
    one; parts it answered are not answered again; a line torn by the kill is skipped."""
    journal = tmp_path / "ledger.journal"
    first = Ledger(default_deadline_ms=1000, grace_ms=0, journal=journal)
    for name in ("a", "b", "c"):
        first.expect(header(name, deadline_ms=60_000), now_s=time.monotonic())
    first.published("a", triggered=True)
    with journal.open("ab") as torn:
        torn.write(b'{"expect": {"station": "s", "cam')  # what a kill mid-write leaves
    second = Ledger(default_deadline_ms=1000, grace_ms=0, journal=journal)
    assert second.recovered == 2 and [f for f in "abc" if second.awaits(f)] == ["b", "c"]
    assert second.answer("a") is False  # answered by the first publisher
    assert second.answer("b") is True
    second.published("b", triggered=True)
    assert [h.frame_id for h in second.overdue(time.monotonic() + 61)] == ["c"]
    second.close()
    third = Ledger(journal=journal)  # the journal was rewritten whole: nothing torn is left
    assert [f for f in "abc" if third.awaits(f)] == ["c"] and b"cam\n" not in journal.read_bytes()


def test_results_held_at_start_are_published_once_after_the_hold(tmp_path):
    """A new publisher holds verdicts until subscribers can hear them; a result repeated during
    the hold is still published once."""
    context = zmq.Context()
    endpoints = {name: f"ipc://{tmp_path}/{name}" for name in ("results", "pub")}
    settings = PublisherSettings("s", endpoints["results"], endpoints["pub"], startup_hold_s=1.0)
    publisher = Publisher(settings, context)
    stop = threading.Event()
    running = threading.Thread(target=publisher.run, args=(stop,))
    running.start()
    subscriber = Subscriber(endpoints["pub"], "s", topics=("verdict",), context=context)
    worker = context.socket(zmq.PUSH)
    worker.connect(endpoints["results"])
    verdict = VerdictMessage("s", "c", "f1", Verdict.OK, "t", 1, part_id="P1", score=1.0, threshold=2.0)
    started = time.monotonic()
    for _ in range(2):
        worker.send_multipart(encode_result(verdict, None))
    heard = []
    while (event := subscriber.receive(2.0)) is not None:
        heard.append((event.verdict.frame_id, time.monotonic() - started))
    stop.set()
    running.join(10)
    worker.close(linger=0)
    subscriber.close()
    context.destroy(linger=0)
    assert [frame for frame, _ in heard] == ["f1"] and heard[0][1] >= 0.9
    assert publisher.ledger.late == 1


def test_an_unwritable_journal_is_a_clear_configuration_error(tmp_path):
    from edge.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="publisher journal"):
        Ledger(journal=blocker / "ledger.journal")  # its folder is a file
