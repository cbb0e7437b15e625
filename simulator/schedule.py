"""When to send: bursty cycles held by an absolute schedule, and the delayed-feedback queue."""

import heapq
import itertools
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Burst:
    """One burst: `count` sends at `rps` from `start` (seconds from the run's start)."""

    index: int
    start: float
    rps: float
    count: int

    def send_time(self, k):
        """Scheduled time of this burst's k-th send."""
        return self.start + k / self.rps


def bursts(cycles, rps, burst_duration, idle_duration):
    """The run's bursts: each cycle is a burst, then idle."""
    period = burst_duration + idle_duration
    count = max(1, round(rps * burst_duration))
    return [Burst(c, c * period, rps, count) for c in range(cycles)]


class SendSchedule:
    """Hands out (seq, burst, due) jobs to sender threads in order; times never drift with load."""

    def __init__(self, burst_list):
        jobs = ((b, b.send_time(k)) for b in burst_list for k in range(b.count))
        self._jobs = ((seq, b, due) for seq, (b, due) in enumerate(jobs))
        self._lock = threading.Lock()

    def next_job(self):
        """The next job (seq counts every send of the run), or None when the schedule is done."""
        with self._lock:
            return next(self._jobs, None)


class FeedbackQueue:
    """A priority queue of feedback due at a time; waiters wake at the earliest due time."""

    def __init__(self, clock):
        self.clock = clock
        self._heap = []
        self._order = itertools.count()
        self._cond = threading.Condition()

    def __len__(self):
        with self._cond:
            return len(self._heap)

    def push(self, due, item):
        """Schedule item at time due."""
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._order), item))
            self._cond.notify()

    def pop_due(self):
        """The earliest item if it is due now, else None."""
        with self._cond:
            if self._heap and self._heap[0][0] <= self.clock():
                return heapq.heappop(self._heap)[2]
            return None

    def next_due(self):
        """When the earliest item is due, or None if empty."""
        with self._cond:
            return self._heap[0][0] if self._heap else None

    def wait(self, timeout):
        """Sleep until something is pushed, the queue closes, or timeout passes."""
        with self._cond:
            self._cond.wait(timeout)

    def close(self):
        """Wake every waiter: no more items will come."""
        with self._cond:
            self._cond.notify_all()

    def drain(self):
        """Remove and return every item left (on interruption)."""
        with self._cond:
            items = [entry[2] for entry in sorted(self._heap)]
            self._heap.clear()
            return items
