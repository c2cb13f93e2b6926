"""A subscriber's replay against a real publisher: a long outage comes back whole in pages that
each fit the reply cap, one garbage answer costs a retry and not the verdicts, and what the
publisher no longer holds is reported with its exact range."""

from __future__ import annotations

import threading
import time

import pytest
import zmq
from bridge_kit import Station
from station_kit import wait_until

from edge.client import Loss, Subscriber

pytestmark = pytest.mark.station


class FlakyQuery:
    """A REP endpoint in front of the publisher's query socket: its first `garbage` answers are
    garbage, the rest are the publisher's own."""

    def __init__(self, context: zmq.Context, folder, upstream: str, garbage: int) -> None:
        self.endpoint = f"ipc://{folder}/flaky"
        self.rep = context.socket(zmq.REP)
        self.rep.bind(self.endpoint)
        self.upstream, self.garbage, self.context = upstream, garbage, context
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        req = self.context.socket(zmq.REQ)
        req.connect(self.upstream)
        while not self.stop.is_set():
            if not self.rep.poll(100):
                continue
            request = self.rep.recv_multipart()
            if self.garbage > 0:
                self.garbage -= 1
                self.rep.send_multipart([b'{"schema": 3, "ok": true, "verdicts": "not a list"}'])
                continue
            req.send_multipart(request)
            self.rep.send_multipart(req.recv_multipart())
        req.close(linger=0)
        self.rep.close(linger=0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_restarted_subscriber_gets_a_long_outage_whole_despite_a_garbage_answer(tmp_path):
    station = Station(tmp_path)
    flaky = FlakyQuery(station.context, tmp_path, station.query, garbage=1)
    first = Subscriber(station.pub, "line1", topics=("verdict",), context=station.context)
    try:
        time.sleep(0.5)  # the subscription reaches the publisher
        station.send(0)
        event = first.receive(10)
        assert event is not None and event.verdict.frame_id == "frame-0000"
        position = (event.verdict.epoch, event.verdict.seq)
        first.close()
        sent = [station.send(i) for i in range(1, 1501)]  # 1,500 verdicts: about 900 kB of replies
        wait_until(lambda: station.publisher.counters.published == 1501, 30, "all published")
        second = Subscriber(
            station.pub, "line1", topics=("verdict",), context=station.context, query_endpoint=flaky.endpoint
        )
        second.resume({"verdict.line1.cam1.": position})
        assert second.unfetched, "the garbage answer leaves the replay to be asked again"
        got: list[str] = []
        deadline = time.monotonic() + 30
        while len(got) < len(sent) and time.monotonic() < deadline:
            event = second.receive(0.2)
            if event is not None and event.verdict is not None:
                got.append(event.verdict.frame_id)
        assert got == sent and second.lost == 0 and second.take_losses() == []
        assert not second.unfetched and second.refused["replay"] == 0
        second.close()
    finally:
        flaky.close()
        station.close()


def test_what_the_publisher_no_longer_holds_is_a_loss_with_its_range(tmp_path):
    station = Station(tmp_path)
    try:
        for i in range(20):
            station.send(i)
        wait_until(lambda: station.publisher.counters.published == 20, 10, "published")
        epoch = station.publisher.epoch
        # retention took the oldest ten (as replay_s would after an hour)
        station.publisher.replay.db.execute("DELETE FROM verdicts WHERE seq <= 10")
        subscriber = Subscriber(
            station.pub, "line1", topics=("verdict",), context=station.context, query_endpoint=station.query
        )
        subscriber.resume({"verdict.line1.cam1.": (epoch, 4)})
        assert [e.verdict.seq for e in subscriber.pending] == list(range(11, 21))
        assert subscriber.take_losses() == [Loss("verdict.line1.cam1.", epoch, 5, 10)]
        assert subscriber.lost == 6
        subscriber.close()
    finally:
        station.close()
