"""Alignment objectives: SDS, the DDPO3D policy gradient, reward backprop, and their combination."""

from ddpo3d.objectives.combined import RewardGuidedSDS, RewardGuidedSDSConfig, build_objective
from ddpo3d.objectives.ddpo3d import DDPO3D, DDPO3DConfig, DDPO3DOutput, policy_gradient_loss
from ddpo3d.objectives.reward_backprop import RewardBackprop, RewardBackpropConfig
from ddpo3d.objectives.sds import SDS, SDSConfig, SDSOutput, sds_weight
from ddpo3d.objectives.stat_tracker import PerPromptStatTracker

__all__ = [
    "DDPO3D",
    "DDPO3DConfig",
    "DDPO3DOutput",
    "PerPromptStatTracker",
    "RewardBackprop",
    "RewardBackpropConfig",
    "RewardGuidedSDS",
    "RewardGuidedSDSConfig",
    "SDS",
    "SDSConfig",
    "SDSOutput",
    "build_objective",
    "policy_gradient_loss",
    "sds_weight",
]
