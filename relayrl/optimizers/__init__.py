"""Policy optimizers: how samples from a WorkerSet become policy improvement."""

from relayrl.optimizers.async_gradients import AsyncGradientsOptimizer
from relayrl.optimizers.async_replay import ApexOptimizer, AsyncReplayOptimizer
from relayrl.optimizers.async_samples import AsyncSamplesOptimizer
from relayrl.optimizers.multi_gpu import LocalMultiGPUOptimizer
from relayrl.optimizers.policy_optimizer import PolicyOptimizer
from relayrl.optimizers.sync_replay import LocalSyncReplayOptimizer, SyncReplayOptimizer
from relayrl.optimizers.sync_samples import LocalSyncOptimizer, SyncSamplesOptimizer

__all__ = [
    "PolicyOptimizer",
    "SyncSamplesOptimizer",
    "LocalSyncOptimizer",
    "LocalMultiGPUOptimizer",
    "AsyncGradientsOptimizer",
    "AsyncSamplesOptimizer",
    "SyncReplayOptimizer",
    "LocalSyncReplayOptimizer",
    "AsyncReplayOptimizer",
    "ApexOptimizer",
]
