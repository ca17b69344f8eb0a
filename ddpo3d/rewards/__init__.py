"""Reward models: ``reward(images [B,H,W,3] in [0,1], prompts) -> scores [B]``.

>>> from ddpo3d.rewards import build_reward
>>> reward = build_reward({"type": "jpeg-compressibility"})
>>> reward.name, reward.differentiable
('jpeg-compressibility', False)

Registered types: ``aesthetic``, ``brightness``, ``clip-score``, ``hpsv2``, ``imagereward``,
``jpeg-compressibility``, ``jpeg-incompressibility``, ``normal-consistency``, ``pickscore``, ``python``,
``reward3d``. A list of blocks builds a weighted sum
(:class:`CompositeReward`). Importing this package is cheap: open_clip and weights are only
touched when a CLIP-based reward is built.
"""

# Each module registers its reward type(s) on import.
from ddpo3d.rewards import (  # noqa: F401,E402
    aesthetic,
    brightness,
    clip_score,
    hpsv2,
    imagereward,
    jpeg,
    normal_consistency,
    pickscore,
    python_fn,
    reward3d,
)
from ddpo3d.rewards.base import RANGE_TOLERANCE, Reward, RewardOutput, validate_inputs
from ddpo3d.rewards.composite import CompositeReward
from ddpo3d.rewards.python_fn import RewardTargetImportError  # noqa: E402
from ddpo3d.rewards.registry import (
    UnknownRewardError,
    build_reward,
    get_reward_class,
    list_rewards,
    register_reward,
)
from ddpo3d.weights import WeightsNotFoundError  # noqa: E402

__all__ = [
    "Reward",
    "RewardOutput",
    "CompositeReward",
    "RANGE_TOLERANCE",
    "validate_inputs",
    "register_reward",
    "build_reward",
    "get_reward_class",
    "list_rewards",
    "UnknownRewardError",
    "RewardTargetImportError",
    "WeightsNotFoundError",
]
