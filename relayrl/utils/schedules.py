"""Value schedules over timesteps: learning rates, exploration epsilons, PER beta."""

from __future__ import annotations

from typing import Sequence


class Schedule:
    def value(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        return self.value(t)


class ConstantSchedule(Schedule):
    def __init__(self, value: float):
        self._v = value

    def value(self, t: int) -> float:
        return self._v


class LinearSchedule(Schedule):
    """Linear interpolation from ``initial_p`` to ``final_p`` over ``schedule_timesteps``, then constant."""

    def __init__(self, schedule_timesteps: int, final_p: float, initial_p: float = 1.0):
        self.schedule_timesteps = max(1, int(schedule_timesteps))
        self.final_p, self.initial_p = final_p, initial_p

    def value(self, t: int) -> float:
        fraction = min(float(t) / self.schedule_timesteps, 1.0)
        return self.initial_p + fraction * (self.final_p - self.initial_p)


class PiecewiseSchedule(Schedule):
    """Linear interpolation between ``(t, value)`` endpoints, as used by ``lr_schedule``.

    Before the first endpoint the first value holds; after the last one, ``outside_value`` (default: the last value).
    """

    def __init__(self, endpoints: Sequence[Sequence[float]], outside_value: float | None = None):
        points = [(int(t), float(v)) for t, v in endpoints]
        if not points:
            raise ValueError("a piecewise schedule needs at least one [timestep, value] endpoint")
        if any(b[0] < a[0] for a, b in zip(points, points[1:])):
            raise ValueError(f"schedule endpoints must be sorted by timestep, got {endpoints}")
        self.endpoints = points
        self.outside_value = points[-1][1] if outside_value is None else outside_value

    def value(self, t: int) -> float:
        if t <= self.endpoints[0][0]:
            return self.endpoints[0][1]
        for (l_t, l_v), (r_t, r_v) in zip(self.endpoints, self.endpoints[1:]):
            if l_t <= t < r_t:
                alpha = float(t - l_t) / (r_t - l_t)
                return l_v + alpha * (r_v - l_v)
        return self.outside_value
