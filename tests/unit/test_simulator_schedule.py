"""Simulator schedule, feedback queue and record stream, with a fake clock."""

import threading

import pytest
from support import SAMPLE, FakeClock

from simulator import records
from simulator.schedule import FeedbackQueue, SendSchedule, bursts


def test_bursts_hold_the_rate_and_cycle():
    plan = bursts(cycles=3, rps=40, burst_duration=2.5, idle_duration=1.5)
    assert [(b.start, b.count) for b in plan] == [(0.0, 100), (4.0, 100), (8.0, 100)]
    times = [plan[1].send_time(k) for k in range(plan[1].count)]
    assert times[0] == 4.0 and times[-1] == pytest.approx(4.0 + 99 / 40)
    assert all(b - a == pytest.approx(1 / 40) for a, b in zip(times, times[1:], strict=False))


def test_short_burst_sends_at_least_once():
    assert bursts(1, rps=1, burst_duration=0.1, idle_duration=0)[0].count == 1


def test_schedule_hands_out_each_job_once_across_threads():
    schedule = SendSchedule(bursts(cycles=2, rps=100, burst_duration=5, idle_duration=1))
    seen, lock = [], threading.Lock()

    def drain():
        while (job := schedule.next_job()) is not None:
            with lock:
                seen.append(job)

    threads = [threading.Thread(target=drain) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seq for seq, _, _ in seen) == list(range(1000))
    dues = {seq: due for seq, _, due in seen}
    assert dues[0] == 0.0 and dues[500] == 6.0  # second cycle starts after burst + idle


def test_feedback_queue_releases_items_when_due_in_due_order():
    clock = FakeClock(100.0)
    queue = FeedbackQueue(clock)
    queue.push(110.0, "late")
    queue.push(105.0, "early")
    queue.push(105.0, "early-second")  # same due time: insertion order
    assert queue.pop_due() is None and queue.next_due() == 105.0
    clock.advance(5)
    assert [queue.pop_due(), queue.pop_due(), queue.pop_due()] == ["early", "early-second", None]
    clock.advance(5)
    assert queue.pop_due() == "late" and len(queue) == 0


def test_feedback_queue_drain_returns_what_is_pending():
    queue = FeedbackQueue(FakeClock())
    for i in range(3):
        queue.push(10.0 - i, i)
    assert queue.drain() == [2, 1, 0] and len(queue) == 0


def test_records_wrap_after_limit():
    data = records.load(SAMPLE, limit=3)
    stream = records.stream(data)
    ids = [next(stream)[0]["id"] for _ in range(7)]
    assert ids == [0, 1, 2, 0, 1, 2, 0]
    features, label = data[0]
    assert "Calories" not in features and isinstance(label, float)


@pytest.mark.parametrize("content", ["", "a,b\n1,2\n", "id,Calories\n"])
def test_unusable_data_is_a_data_error(tmp_path, content):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(records.DataError):
        records.load(path)


def test_missing_data_file(tmp_path):
    with pytest.raises(records.DataError, match="cannot read"):
        records.load(tmp_path / "nope.csv")
