"""AsyncSampler: a SyncSampler stepped by a background thread of the worker (``sample_async``, used by A3C).

    sampler = AsyncSampler(SyncSampler(...), queue_size=5)
    batch = sampler.sample()     # the oldest finished fragment; the thread is already sampling the next ones

The thread keeps up to ``queue_size`` finished fragments ready, so a worker's ``sample()`` returns at once while
its main thread computes gradients (A3C, Mnih et al. 2016: actors never wait for the learner). The price is
staleness: a fragment may have been sampled with weights up to ``queue_size`` updates old (the seed config's
"increases the effective sample_batch_size by up to 5x").
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from relayrl.env.env_checks import EnvCheckError
from relayrl.evaluation.metrics import RolloutMetrics
from relayrl.evaluation.sampler import SyncSampler
from relayrl.policy.sample_batch import SampleBatch


class AsyncSampler:
    def __init__(self, sampler: SyncSampler, queue_size: int = 5, timeout_s: float = 600.0):
        self.sampler = sampler
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.timeout_s = timeout_s
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def env(self) -> Any:
        return self.sampler.env

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                batch = self.sampler.sample()
                while not self._stopped.is_set():
                    try:
                        self.queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # noqa: BLE001 - handed to the caller of sample()
            if not self._stopped.is_set():
                self.queue.put(e)

    def sample(self) -> SampleBatch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="relayrl-async-sampler", daemon=True)
            self._thread.start()
        item = self.queue.get(timeout=self.timeout_s)
        if isinstance(item, EnvCheckError):
            raise item  # the one class users catch for a bad env, with its message on the last line
        if isinstance(item, BaseException):
            raise RuntimeError("the background sampling thread failed") from item
        return item

    def get_metrics(self) -> list[RolloutMetrics]:
        return self.sampler.get_metrics()

    def perf_stats(self) -> dict:
        return {**self.sampler.perf_stats(), "async_queue_size": float(self.queue.qsize())}

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
