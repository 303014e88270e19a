"""@batch: concurrent single-item calls gathered into one call of a batch function.

Layout:
    _engine     the decisions (gathering, partitions, slots, queue, sharing out), no I/O
    _decorator  @batch, its sync (threads) and async (asyncio, trio) shells, and typing
"""

from __future__ import annotations

from ._decorator import AsyncBatchedFunction as AsyncBatchedFunction
from ._decorator import BatchedFunction as BatchedFunction
from ._decorator import batch as batch
from ._engine import Batcher as Batcher
from ._engine import BatchStats as BatchStats

__all__ = ["AsyncBatchedFunction", "BatchStats", "BatchedFunction", "Batcher", "batch"]
