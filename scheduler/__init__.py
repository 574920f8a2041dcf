"""Pure node-scheduling policies for placing new volumes."""

from scheduler.policies import DiskState, NodeState, Policy, Request, best_node, fits, pool_capacity, rank_nodes

__all__ = ["DiskState", "NodeState", "Policy", "Request", "best_node", "fits", "pool_capacity", "rank_nodes"]
