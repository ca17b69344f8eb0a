"""The SDS-family terms by objective type (the call interface is in :mod:`ddpo3d.objectives.interface`).

``combined.OBJECTIVES`` includes this table, so each type is available as
``objective: {type: <name>, ...}`` and shows up wherever that table is enumerated.
"""

from __future__ import annotations

from ddpo3d.objectives.dreamdpo import DreamDPO
from ddpo3d.objectives.reward_sds import RewardSDS
from ddpo3d.objectives.reward_tilted import RewardTilted

SDS_TERMS = {"reward-tilted": RewardTilted, "reward-sds": RewardSDS, "dreamdpo": DreamDPO}
