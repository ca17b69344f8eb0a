"""``ddpo3d-system``: DreamFusion-style training that also measures the reward.

Everything threestudio's ``dreamfusion-system`` does (render, guidance, ``lambda_*``-weighted
losses, regularisers, validation grids, test turntable video), plus:

* the validation and test renders are scored with the reward (the guidance's, or
  ``system.eval_reward``) and logged as ``val/reward`` / ``test/reward``;
* with ``reference: toy`` the renders are compared with the toy object the prompt names
  (fidelity PSNR, ``val/psnr`` / ``test/psnr``);
* every training scalar the guidance logs, and the eval metrics, are appended to
  ``save/metrics.csv`` as they come, and ``save/curves.png`` plots reward and fidelity
  against steps at every validation and at the end;
* test views are also saved as plain RGB (``save/it<step>-test-rgb/<i>.png``) for
  ``python -m ddpo3d.eval``, and their normal maps (``save/it<step>-test-normal/<i>.png``)
  when the renderer returns normals;
* in training, a guidance whose reward scores geometry (``guidance.needs_render_out``, e.g.
  ``normal-consistency`` with ``reward-backprop``) gets this step's render output as
  ``render_out=`` on top of threestudio's call ``guidance(comp_rgb, prompt_utils, **batch)``
  (the host's training step is reused unchanged: the render output rides in a copy of the batch);
* a geometry's own training callbacks (``geometry.training_callbacks()``: Gaussian splats'
  densification) are attached through ``configure_callbacks``;
* training is guarded (``ddpo3d.training_guard``): a non-finite reward, advantage, loss or
  gradient skips the step's update (``train/skipped_steps``; the run stops after
  ``max_consecutive_skips`` in a row), any exception writes ``ckpts/last.ckpt`` and names the
  component, and checkpoints carry the guidance RNG and stat tracker for exact resume.

Dropping SDS after N steps (the DDPO3D ablation) is the usual schedule on the weight:
``lambda_sds: [N, 1.0, 0.0, N+1]``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ddpo3d.host import DreamFusion, register
from ddpo3d.rewards import build_reward
from ddpo3d.toy import parse_toy_prompt, render_toy_object
from ddpo3d.training_guard import ReliableSystemMixin, training_guard_of, warn_negative_reward_weights
from ddpo3d.utils.config import ConfigError, to_primitive
from ddpo3d.utils.prompts import check_prompt
from ddpo3d.utils.typing import Any, Dict, List, Optional

from .metrics import MetricHistory

REFERENCES = (None, "toy")
#: the batch key under which the training render output reaches the guidance call (as ``render_out=``)
RENDER_OUT_KEY = "render_out"
# train_params/: the loss weights; train/densify_*: logged only on densification steps (their
# callback records them in the history itself), so Lightning's callback_metrics would repeat
# their last value at every later step
TRAIN_KEYS_SKIP = ("train_params/", "train/densify_", "train/skipped_")
#: on the lite host the base system is guarded already; on threestudio the mixin comes first
_BASES = (DreamFusion,) if issubclass(DreamFusion, ReliableSystemMixin) else (ReliableSystemMixin, DreamFusion)


@register("ddpo3d-system")
class DDPO3DSystem(*_BASES):
    """DreamFusion system with reward / fidelity evaluation and metric curves."""

    @dataclass
    class Config(DreamFusion.Config):
        # reward block(s) scoring validation/test renders; null = the guidance's own reward
        eval_reward: Any = None
        # "toy": fidelity PSNR against the toy object named by the prompt (ddpo3d.toy); null = off
        reference: Optional[str] = None
        # background colour of the toy reference (match the asset's background)
        reference_background: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
        # also save plain RGB test views for ddpo3d.eval
        save_rgb_views: bool = True
        # stop after this many steps in a row skipped for non-finite values (0: never)
        max_consecutive_skips: int = 5

    cfg: Config

    def configure(self) -> None:
        super().configure()
        if self.cfg.reference not in REFERENCES:
            raise ConfigError(f"system.reference must be one of {REFERENCES}, got {self.cfg.reference!r}")
        self._eval_reward_module = None
        self._eval_scores: Dict[str, List[float]] = {}
        self._history: Optional[MetricHistory] = None
        if self.cfg.max_consecutive_skips < 0:
            raise ConfigError(f"system.max_consecutive_skips must be >= 0, got {self.cfg.max_consecutive_skips}")
        if "prompt" in self.cfg.prompt_processor:
            check_prompt(self.cfg.prompt_processor.get("prompt"))
        warn_negative_reward_weights(self.cfg.loss)

    # ------------------------------------------------------------------ helpers
    @property
    def history(self) -> MetricHistory:
        if self._history is None:
            self._history = MetricHistory(self.get_save_path("metrics.csv"))
        return self._history

    @property
    def prompt(self) -> str:
        return str(self.cfg.prompt_processor.get("prompt", ""))

    def eval_reward(self):
        """The reward used on eval renders (built once; None when no reward is configured)."""
        if self._eval_reward_module is None:
            guidance_reward = getattr(getattr(self, "guidance", None), "reward", None)
            if self.cfg.eval_reward is not None:
                self._eval_reward_module = build_reward(to_primitive(self.cfg.eval_reward)).to(self.device)
            elif guidance_reward is not None:
                self._eval_reward_module = guidance_reward
            elif self.cfg.guidance.get("reward") is not None:
                self._eval_reward_module = build_reward(to_primitive(self.cfg.guidance.reward)).to(self.device)
        return self._eval_reward_module

    def _score(self, out: Dict[str, Any], batch: Dict[str, Any]) -> Dict[str, float]:
        rgb = out["comp_rgb"].detach().clamp(0, 1)
        scores: Dict[str, float] = {}
        reward = self.eval_reward()
        if reward is not None:
            # geometry rewards (needs_render_out, e.g. normal-consistency) also get the render and the rays
            extra = {"render_out": {**batch, **out}} if getattr(reward, "needs_render_out", False) else {}
            with torch.no_grad():
                res = reward.evaluate(rgb, [self.prompt] * rgb.shape[0], **extra)
            scores["reward"] = float(res.scores.float().mean())
            if len(res.terms) > 1:
                for name, value in res.terms.items():
                    scores[f"reward/{name}"] = float(value.float().mean())
        if self.cfg.reference == "toy":
            ref = self.reference_images(batch)
            mse = float(((rgb - ref) ** 2).mean())
            scores["psnr"] = -10.0 * math.log10(max(mse, 1e-10))
            out["reference_rgb"] = ref
        return scores

    def reference_images(self, batch: Dict[str, Any]) -> torch.Tensor:
        """The toy object's render from the batch cameras."""
        obj = parse_toy_prompt(self.prompt)
        rgb, _ = render_toy_object(obj, batch["rays_o"], batch["rays_d"], tuple(self.cfg.reference_background))
        return rgb

    def _grid(self, out: Dict[str, Any]) -> list:
        cols = [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}}]
        if "reference_rgb" in out:
            cols.append({"type": "rgb", "img": out["reference_rgb"][0], "kwargs": {"data_format": "HWC"}})
        if "comp_normal" in out:
            cols.append(
                {"type": "rgb", "img": out["comp_normal"][0], "kwargs": {"data_format": "HWC", "data_range": (0, 1)}}
            )
        cols.append(
            {"type": "grayscale", "img": out["opacity"][0, :, :, 0], "kwargs": {"cmap": None, "data_range": (0, 1)}}
        )
        return cols

    def _accumulate(self, scores: Dict[str, float]) -> None:
        for k, v in scores.items():
            self._eval_scores.setdefault(k, []).append(v)

    def _flush_eval(self, split: str) -> Dict[str, float]:
        means = {k: sum(v) / len(v) for k, v in self._eval_scores.items() if v}
        self._eval_scores = {}
        for k, v in means.items():
            self.log(f"{split}/{k}", v)
        self.history.add(self.true_global_step, split, means)
        self.history.plot(self.get_save_path("curves.png"), title=self.prompt)
        return means

    # ------------------------------------------------------------------ training
    def forward(self, batch: Dict[str, Any]) -> Dict[str, Any]:
        """The host's render; in a training step whose guidance needs it, the output is also put
        into that step's (copied) batch, which the host then expands into the guidance call."""
        out = super().forward({k: v for k, v in batch.items() if k != RENDER_OUT_KEY})
        if batch is self.__dict__.get("_render_out_batch"):
            batch[RENDER_OUT_KEY] = out
        return out

    def training_step(self, batch, batch_idx):
        """The host's training step; geometry rewards also get the render output (see :meth:`forward`)."""
        if not getattr(getattr(self, "guidance", None), "needs_render_out", False):
            return super().training_step(batch, batch_idx)
        batch = dict(batch)  # the data loader's batch is left as it was
        self.__dict__["_render_out_batch"] = batch
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self.__dict__["_render_out_batch"] = None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        guard = training_guard_of(self)
        values = {}
        if guard.step_skip is not None:
            # this step's scalars were not (all) logged: record the skip and what was non-finite
            values["skipped_steps"] = float(guard.skipped_steps)
            values[f"skipped_{guard.step_skip[0]}"] = 1.0
        else:
            metrics = getattr(self.trainer, "callback_metrics", {}) or {}
            for key, value in metrics.items():
                if key.startswith("train/") and not key.startswith(TRAIN_KEYS_SKIP):
                    try:
                        values[key[len("train/") :]] = float(value)
                    except (TypeError, ValueError):
                        continue
        if getattr(self, "_fit_t0", None) is None:
            self._fit_t0 = time.perf_counter()
        # wall time since the first step ended (continued across a resume)
        values["elapsed_s"] = self.__dict__.get("_elapsed_resumed", 0.0) + time.perf_counter() - self._fit_t0
        self._elapsed_before = values["elapsed_s"]
        self.history.add(self.true_global_step, "train", values)

    def configure_callbacks(self):
        """The base's callbacks (the training guard first, so a skipped step is known before the
        others' ``on_before_optimizer_step``), then the geometry's own (Gaussian splats: densification)."""
        callbacks = super().configure_callbacks() or []
        callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
        make = getattr(getattr(self, "geometry", None), "training_callbacks", None)
        return callbacks + (list(make()) if make is not None else [])

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self._accumulate(self._score(out, batch))
        index = int(batch["index"][0])
        self.save_image_grid(
            f"it{self.true_global_step}-{index}.png",
            self._grid(out),
            name="validation_step",
            step=self.true_global_step,
        )

    def on_validation_epoch_end(self):
        self._flush_eval("val")

    def test_step(self, batch, batch_idx):
        out = self(batch)
        self._accumulate(self._score(out, batch))
        index = int(batch["index"][0])
        self.save_image_grid(
            f"it{self.true_global_step}-test/{index}.png", self._grid(out), name="test_step", step=self.true_global_step
        )
        if self.cfg.save_rgb_views:
            self.save_image_grid(
                f"it{self.true_global_step}-test-rgb/{index}.png",
                [{"type": "rgb", "img": out["comp_rgb"][0], "kwargs": {"data_format": "HWC"}}],
                name=None,
                step=self.true_global_step,
            )
            if "comp_normal" in out:  # GPTEval3D's judge compares RGB and normal maps
                self.save_image_grid(
                    f"it{self.true_global_step}-test-normal/{index}.png",
                    [
                        {
                            "type": "rgb",
                            "img": out["comp_normal"][0],
                            "kwargs": {"data_format": "HWC", "data_range": (0, 1)},
                        }
                    ],
                    name=None,
                    step=self.true_global_step,
                )

    def on_test_epoch_end(self):
        super().on_test_epoch_end()  # turntable video
        self._flush_eval("test")
