"""rlvr: reinforcement learning with verifiable rewards.

The stable core is the reward interface (:mod:`rlvr.rewards`), the registry
(:mod:`rlvr.registry`), the verifiers, sandboxes, environments and trainers. New methods
live in :mod:`rlvr.experimental` and may change without notice.
"""

from rlvr.rewards import FunctionReward, Outcome, Reward, Sample, Status, WeightedSum, isolated

__version__ = "0.1.0"

__all__ = ["FunctionReward", "Outcome", "Reward", "Sample", "Status", "WeightedSum", "isolated", "__version__"]
