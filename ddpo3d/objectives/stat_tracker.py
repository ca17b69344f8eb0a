"""Per-prompt reward normalisation (DDPO's ``PerPromptStatTracker``, Black et al. 2023, sec. 5).

Each prompt keeps a FIFO buffer of its last ``buffer_size`` rewards. The advantage of a reward r
for prompt p is ``(r - mean_p) / (std_p + eps)``, where ``(mean_p, std_p)`` are the statistics of
p's buffer once it holds at least ``min_count`` rewards, and of the *whole current batch* until
then (DDPO's rule: batch statistics until the buffer fills).
"""

from __future__ import annotations

import math
from collections import deque

import torch

from ddpo3d.utils.typing import Any, Dict, Float, Sequence, Tensor


class PerPromptStatTracker:
    """Running per-prompt mean / std of rewards.

    Args:
        buffer_size: rewards kept per prompt (DDPO default 16 in its configs; 32 here).
        min_count: rewards a prompt needs before its own statistics replace the batch's.
        eps: added to the std in the denominator.
    """

    def __init__(self, buffer_size: int = 32, min_count: int = 16, eps: float = 1e-6):
        if buffer_size < 1 or min_count < 1:
            raise ValueError(f"buffer_size and min_count must be >= 1, got {buffer_size}, {min_count}")
        if min_count > buffer_size:
            raise ValueError(
                f"min_count ({min_count}) > buffer_size ({buffer_size}): a prompt's statistics would never be used"
            )
        self.buffer_size = int(buffer_size)
        self.min_count = int(min_count)
        self.eps = float(eps)
        self.buffers: Dict[str, deque] = {}

    def update(self, prompts: Sequence[str], rewards: Float[Tensor, " N"]) -> Float[Tensor, " N"]:
        """Add a batch of rewards and return their advantages.

        Args:
            prompts: one prompt per reward.
            rewards: Float[N].

        Returns:
            Advantages Float[N] (same device/dtype as ``rewards``).
        """
        rewards = torch.as_tensor(rewards)
        if len(prompts) != rewards.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {rewards.shape[0]} rewards")
        values = rewards.detach().double().cpu()
        batch_mean = values.mean()
        batch_std = values.std(unbiased=False)
        advantages = torch.empty_like(values)
        unique = list(dict.fromkeys(prompts))
        for prompt in unique:
            idx = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buf = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(v for v in values[idx].tolist() if math.isfinite(v))  # a NaN would poison the buffer
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                hist = torch.tensor(list(buf), dtype=torch.float64)
                mean, std = hist.mean(), hist.std(unbiased=False)
            advantages[idx] = (values[idx] - mean) / (std + self.eps)
        return advantages.to(
            device=rewards.device, dtype=rewards.dtype if rewards.is_floating_point() else torch.float32
        )

    def get_stats(self) -> Dict[str, Dict[str, float]]:
        """Per-prompt ``{"mean", "std", "count"}`` of the buffers."""
        out = {}
        for prompt, buf in self.buffers.items():
            hist = torch.tensor(list(buf), dtype=torch.float64)
            out[prompt] = {
                "mean": float(hist.mean()),
                "std": float(hist.std(unbiased=False)),
                "count": len(buf),
            }
        return out

    def state_dict(self) -> Dict[str, Any]:
        """The buffers and settings, as plain Python values (for checkpoints)."""
        return {
            "buffer_size": self.buffer_size,
            "min_count": self.min_count,
            "buffers": {p: list(buf) for p, buf in self.buffers.items()},
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (buffers are cut to this tracker's ``buffer_size``)."""
        for key in ("buffers",):
            if key not in state:
                raise KeyError(f"PerPromptStatTracker state has no {key!r} (keys: {sorted(state)})")
        self.buffers = {
            p: deque((float(v) for v in values), maxlen=self.buffer_size) for p, values in state["buffers"].items()
        }

    def clear(self) -> None:
        """Forget all buffers."""
        self.buffers = {}
