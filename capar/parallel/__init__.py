"""Process-parallel Channel Access: CAProcess and CAPool with a clean libca context per process."""
from __future__ import annotations

from .coordinator import Coordinator, CoordinatorBroken
from .shard import ShardClient, ShardedGroup, ShardedMonitor, ShardServer
from .process import CAPool, CAProcess, default_start_method, get_context, shutdown_helpers

__all__ = ["Coordinator", "CoordinatorBroken", "ShardedGroup", "ShardedMonitor", "ShardClient", "ShardServer", "CAProcess", "CAPool", "default_start_method", "get_context", "shutdown_helpers"]
