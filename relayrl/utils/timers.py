"""Cheap wall-clock timers for the stages of the hot loops (sample, learn, weight sync)."""

from __future__ import annotations

import time


class TimerStat:
    """Context manager that keeps the mean duration over a window of recent uses.

    Usage::

        timer = TimerStat()
        with timer:
            do_work()
        timer.push_units_processed(batch.count)
        timer.mean, timer.mean_throughput
    """

    def __init__(self, window_size: int = 10):
        self._window_size = window_size
        self._samples: list[float] = []
        self._units: list[float] = []
        self._start: float | None = None
        self.count = 0

    def __enter__(self) -> "TimerStat":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.push(time.perf_counter() - self._start)
        self._start = None

    def push(self, seconds: float) -> None:
        self._samples.append(seconds)
        del self._samples[: -self._window_size]
        self.count += 1

    def push_units_processed(self, n: float) -> None:
        self._units.append(n)
        del self._units[: -self._window_size]

    @property
    def mean(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    @property
    def mean_units_processed(self) -> float:
        return sum(self._units) / len(self._units) if self._units else 0.0

    @property
    def mean_throughput(self) -> float:
        time_total = sum(self._samples[-len(self._units) :]) if self._units else 0.0
        return sum(self._units) / time_total if time_total > 0 else 0.0
