"""DDPO3D: a policy gradient through one denoising step from the noised render.

DDPO3D (Sharma et al. 2023, arXiv 2312.04806) applies DDPO (Black et al. 2023, arXiv
2305.13301) to score distillation. Per view, with the render's model-space x_0 (with grad), the
SDS branch's t, ε and x_t = sqrt(ᾱ_t) x_0 + sqrt(1-ᾱ_t) ε:

* policy: the stochastic DDIM step (Song et al. 2020, eq. 12/16, η > 0)
  π(a | x_t) = N(a; μ(x_t, ε̂), σ_t² I), μ = sqrt(ᾱ_p) x̂_0 + sqrt(1-ᾱ_p-σ_t²) ε̂,
  x̂_0 = (x_t - sqrt(1-ᾱ_t) ε̂)/sqrt(ᾱ_t), t_p = max(t - step_size, 0);
  the action a = x_{t_p} is sampled ``num_samples`` (K) times per view (K draws of the step
  noise z from the same x_t; the forward noise ε and t are the SDS branch's, one per view).
* reward target R(a) (computed without grad on ``predictor.decode`` of):
  ``x0_pred``: the one-step prediction x̂_0(a) at t_p, from
      ``x0_from="action_affine"``: x̂_0 = (a - sqrt(1-ᾱ_p) ε̂)/sqrt(ᾱ_p) with the ε̂ already
      computed at x_t (an affine map of the action, no extra UNet call), or
      ``x0_from="action_unet"``: the same with ε̂(a, t_p) from another UNet call;
  ``rollout``: deterministic DDIM (η = 0) from a to x_0 in ``rollout_steps`` steps;
  ``render``: the render itself (the paper's literal reading). R then does not depend on the
      action, so E[R ∇ log π] = R E[∇ log π] = 0: the expected gradient is zero. Kept for
      reproduction; a warning is issued.
* loss (REINFORCE, Williams 1992; DDPO eq. 5):  L = -mean_i A_i log π(a_i | x_t). Gradients
  reach x_0 (hence the renderer) only through x_t in μ. (DDPO's PPO clipping cannot act here:
  each action is scored by the policy that drew it, so the importance ratio is always 1.)

Which gradient does this estimate? Write G(x_t) = E_{a~π(.|x_t)}[R(a)] with R's own
dependence on ε̂ frozen (R is a detached number). Then by the score-function identity
E[R ∇_{x_0} log π] = ∇_{x_0} G(x_t(x_0)) with the derivative taken through the *policy*:

* ``unet_jacobian: false`` — ε̂ is a constant in μ, exactly SDS's approximation (DreamFusion drops
  ∂ε̂/∂x_t). μ depends on x_t only through x̂_0, ∂μ/∂x_t = sqrt(ᾱ_p/ᾱ_t) I, so the estimate is
  sqrt(ᾱ_p) / σ_t² · (a - μ) · A: a zeroth-order (evolution-strategy-like) estimate of
  ∇_{x_0} G with ε̂ frozen; it costs the reward evaluation only (no UNet backward).
* ``unet_jacobian: true`` — the graph from ε̂ to x_t is kept (the paper's "grad enabled" UNet),
  estimating the gradient of G through the full policy mean μ(x_t, ε̂(x_t)); one backward
  through the UNet.

With ``logprob_reduction="mean"`` (DDPO) log π is divided by the dimension count D, so the
estimate is 1/D of the above. ``num_steps > 1`` continues the chain with further sampled DDIM
steps (no grad): only the first step's log-prob depends on x_0 (later ones condition on sampled,
detached actions), so the loss uses that one and the reward of the chain's end.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass

import torch

from ddpo3d.diffusion.base import NoisePredictor
from ddpo3d.diffusion.ddim import ddim_step_with_logprob
from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.objectives.stat_tracker import PerPromptStatTracker
from ddpo3d.utils.config import parse_structured
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Int, Optional, Sequence, Tensor

TARGETS = ("x0_pred", "rollout", "render")
X0_FROM = ("action_affine", "action_unet")
ADVANTAGES = ("group", "per_prompt", "batch", "none")


@dataclass
class DDPO3DConfig:
    """Options of the DDPO3D policy-gradient objective (its strength is the system's ``lambda_ddpo``)."""

    target: str = "x0_pred"  # reward target: "x0_pred" | "rollout" | "render" (zero-mean, for reproduction)
    x0_from: str = "action_affine"  # x0_pred: "action_affine" (reuse ε̂) | "action_unet" (ε̂ at the action)
    num_samples: int = 4  # K actions (step-noise draws) per view
    num_steps: int = 1  # denoising steps in the policy rollout before the reward target
    eta: float = 1.0  # DDIM η > 0 (1 = DDPM posterior variance)
    step_size: int = 20  # Δt of a policy step in training timesteps (T // 50: DDPO's 50 DDIM steps)
    rollout_steps: int = 10  # deterministic DDIM steps from the action to x_0 (target "rollout")
    unet_jacobian: bool = False  # keep ∂ε̂/∂x_t in the policy mean (one UNet backward)
    guidance_scale: Optional[float] = None  # CFG scale of the policy's ε̂; None = the SDS scale
    logprob_reduction: str = "mean"  # "mean" over pixel dims (DDPO) | "sum" (true log-density)
    # "group" (leave-one-out mean of the view's other draws; unbiased, K >= 2) | "per_prompt" (stat
    # tracker, for K = 1) | "batch" (batch z-score) | "none" (raw reward)
    advantage: str = "group"
    antithetic: bool = False  # draws in mirrored pairs z, -z per view (K even); unbiased
    normalize_std: bool = False  # group: divide by the group's reward std (GRPO-style; biased)
    buffer_size: int = 32  # per-prompt stat tracker: rewards kept per prompt
    min_count: int = 16  # per-prompt stat tracker: batch stats until a prompt has this many
    adv_clip_max: Optional[float] = 5.0  # advantages clipped to [-max, max]; None = no clipping
    # decode reward targets at about this many pixels a side (the reward model's input, e.g. 224 for
    # CLIP): latents are resized to size/8 before the VAE decoder; null = full-size decode
    reward_resolution: Optional[int] = None
    # decode reward targets with a tiny autoencoder instead of the predictor's VAE: a local
    # AutoencoderTiny folder or a cached hub repo ("madebyollin/taesd" for SD 1.x/2.x latents); null = the VAE
    reward_decoder: Optional[str] = None


@dataclass
class DDPO3DOutput:
    """Result of one DDPO3D evaluation (``B·K`` items, view-major: item i is view i // K).

    Attributes:
        loss_ddpo: scalar policy-gradient loss.
        log_prob: log π(a | x_t) [BK] (with graph to x_0).
        rewards: [BK] (detached).
        advantages: [BK] (detached).
        actions: sampled a [BK, C, h, w].
        target_x0: model-space reward targets [BK, C, h, w].
        images: decoded targets [BK, H, W, 3].
        diagnostics: scalar floats.
    """

    loss_ddpo: Tensor
    log_prob: Tensor
    rewards: Tensor
    advantages: Tensor
    actions: Tensor
    target_x0: Tensor
    images: Tensor
    diagnostics: Dict[str, float]


def policy_gradient_loss(advantages: Float[Tensor, " N"], log_prob: Float[Tensor, " N"]) -> Tensor:
    """REINFORCE (Williams 1992; DDPO eq. 5): ``L = -mean_i A_i log π(a_i | x_t)``, A detached.

    Args:
        advantages: A (detached here).
        log_prob: log π with graph.

    Returns:
        The scalar loss.
    """
    return -(advantages.detach() * log_prob).mean()


def repeat_k(x: Any, k: int, batch: int) -> Any:
    """Repeat a per-view tensor K times along dim 0 (view-major: item i is view i // K).

    Non-tensors, ``None`` and tensors whose first dim is not ``batch`` (broadcastable ones) pass through.
    """
    if k == 1 or not torch.is_tensor(x) or x.dim() == 0 or x.shape[0] != batch:
        return x
    return x.repeat_interleave(k, dim=0)


@dataclass
class PolicySample:
    """The sampled chain of one evaluation (``B·K`` items)."""

    log_prob: Tensor  # log π(a | x_t) of the first step, with graph to x_t
    action: Tensor  # the chain's last sample (detached)
    t_action: Tensor  # its timestep
    eps_action: Tensor  # the ε̂ that produced it (detached)
    std: Tensor  # σ_t of the first step


class DDPO3D:
    """The DDPO3D policy-gradient objective (see the module docstring for the estimator).

    Args:
        cfg: dict / DictConfig of :class:`DDPO3DConfig` keys.
    """

    Config = DDPO3DConfig

    def __init__(self, cfg: Any = None):
        if isinstance(cfg, DDPO3DConfig):
            cfg = dataclasses.asdict(cfg)
        self.cfg = parse_structured(DDPO3DConfig, cfg, where="DDPO3D objective")
        c = self.cfg
        for key, value, allowed in (
            ("target", c.target, TARGETS),
            ("x0_from", c.x0_from, X0_FROM),
            ("advantage", c.advantage, ADVANTAGES),
            ("logprob_reduction", c.logprob_reduction, ("mean", "sum")),
        ):
            if value not in allowed:
                raise ValueError(f"DDPO3D objective: {key}={value!r} is not one of {allowed}")
        if not c.eta > 0:
            raise ValueError(f"DDPO3D objective: eta must be > 0 (the policy needs a density), got {c.eta}")
        for key in ("num_samples", "num_steps", "step_size", "rollout_steps"):
            if int(c[key]) < 1:
                raise ValueError(f"DDPO3D objective: {key} must be >= 1, got {c[key]}")
        if c.antithetic and int(c.num_samples) % 2:
            raise ValueError(f"DDPO3D objective: antithetic draws need an even num_samples, got {c.num_samples}")
        if c.advantage == "group" and int(c.num_samples) < 2:
            raise ValueError(
                "DDPO3D objective: advantage 'group' needs num_samples >= 2 (a baseline from the view's "
                "other draws); use 'per_prompt' for K = 1"
            )
        if c.target == "render":
            warnings.warn(
                "DDPO3D target 'render' scores the render itself: the reward does not depend on the "
                "sampled action, so the policy gradient has zero mean (pure noise). Kept only to "
                "reproduce the paper's literal reading; use 'x0_pred' or 'rollout'.",
                stacklevel=2,
            )
        self.tracker = PerPromptStatTracker(c.buffer_size, c.min_count)
        self._tiny_decoder = None

    def update_step(self, epoch: int, global_step: int) -> None:
        """Nothing is scheduled inside the objective (its strength is ``lambda_ddpo``)."""

    def state_dict(self) -> Dict[str, Any]:
        """Checkpointable state: the per-prompt stat tracker's buffers."""
        return {"tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.tracker.load_state_dict(state["tracker"])

    # ------------------------------------------------------------------ 1. sampling
    def sample(
        self,
        predictor: NoisePredictor,
        x_t: Float[Tensor, "N C h w"],
        eps: Float[Tensor, "N C h w"],
        t: Int[Tensor, " N"],
        cond: Any,
        uncond: Any,
        scale: float,
        generator: Optional[torch.Generator],
    ) -> PolicySample:
        """Draw a ~ π(.|x_t) = N(μ(x_t, ε̂), σ_t² I), then ``num_steps - 1`` more sampled steps (no grad).

        μ = sqrt(ᾱ_p) x̂_0 + sqrt(1-ᾱ_p-σ_t²) ε̂ (DDIM eq. 12), log π with graph to x_t.
        """
        c = self.cfg
        t_prev = (t - int(c.step_size)).clamp(min=0)
        noise = self.step_noise(eps, generator)
        step = ddim_step_with_logprob(
            predictor,
            eps,
            t,
            x_t,
            float(c.eta),
            prev_timestep=t_prev,
            logprob_reduction=c.logprob_reduction,
            variance_noise=noise.to(eps.device),
        )
        with torch.no_grad():
            action, t_a, eps_a = step.prev_sample, t_prev, eps.detach()
            for _ in range(int(c.num_steps) - 1):
                if bool((t_a == 0).any()):
                    break  # cannot step past t = 0
                nxt = (t_a - int(c.step_size)).clamp(min=0)
                eps_a = predictor.predict_eps(action, t_a, cond, uncond, scale)
                action = ddim_step_with_logprob(
                    predictor, eps_a, t_a, action, float(c.eta), prev_timestep=nxt, generator=generator
                ).prev_sample
                t_a = nxt
        return PolicySample(step.log_prob, action, t_a, eps_a, step.std_dev_t)

    def step_noise(self, like: Float[Tensor, "N C h w"], generator: Optional[torch.Generator]) -> Tensor:
        """z ~ N(0, I) for the first step; with ``antithetic`` the K draws of a view are (z_1, -z_1, z_2, -z_2, ...).

        Mirrored draws keep each draw's marginal N(0, I), so every term of the estimate keeps its
        mean; a pair's two terms give (R(μ+σz) - R(μ-σz)) z / (2σ) (a central difference: the
        even part of R, the bulk of its variance, cancels). Owen 2013, "Monte Carlo theory", ch. 8.
        """
        device = generator.device if generator is not None else like.device
        if not self.cfg.antithetic:
            return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
        half = torch.randn((like.shape[0] // 2, *like.shape[1:]), generator=generator, device=device, dtype=like.dtype)
        return torch.stack([half, -half], 1).reshape(like.shape).to(like.device)

    # ------------------------------------------------------------------ 2. reward targets
    @torch.no_grad()
    def reward_target(
        self,
        predictor: NoisePredictor,
        x0: Float[Tensor, "N C h w"],
        sample: PolicySample,
        cond: Any,
        uncond: Any,
        scale: float,
    ) -> Float[Tensor, "N C h w"]:
        """The model-space x_0 the reward scores (``target``).

        ``x0_pred``: x̂_0(a) = (a - sqrt(1-ᾱ_a) ε̂) / sqrt(ᾱ_a) (DDIM eq. 12); ``rollout``: η = 0
        DDIM from a to x_0; ``render``: the (repeated) render x_0 itself.
        """
        c = self.cfg
        if c.target == "render":
            return x0.detach()
        a, t_a = sample.action, sample.t_action
        if c.target == "rollout":
            return self._rollout(a, t_a, predictor, cond, uncond, scale)
        eps = sample.eps_action
        if c.x0_from == "action_unet":
            eps = predictor.predict_eps(a, t_a, cond, uncond, scale)
        ab_a = gather_alphas(predictor.alphas_cumprod, t_a, ndim=a.dim())
        return (a - (1.0 - ab_a).sqrt() * eps) / ab_a.sqrt()

    @torch.no_grad()
    def _rollout(
        self,
        x: Tensor,
        t: Int[Tensor, " N"],
        predictor: NoisePredictor,
        cond: Any,
        uncond: Any,
        scale: float,
    ) -> Tensor:
        """Deterministic DDIM (η = 0, DDIM eq. 12) from (x, t) to x̂_0 in ``rollout_steps`` steps.

        Timesteps τ_i = round(t (1 - i/n)), i = 0..n; the last ε̂ at τ_n = 0 gives x̂_0.
        """
        n = int(self.cfg.rollout_steps)
        alphas = predictor.alphas_cumprod
        for i in range(n + 1):
            tau = torch.round(t.float() * (1.0 - i / n)).long()
            eps = predictor.predict_eps(x, tau, cond, uncond, scale)
            ab = gather_alphas(alphas, tau, ndim=x.dim())
            x0_hat = (x - (1.0 - ab).sqrt() * eps) / ab.sqrt()
            if i == n:
                return x0_hat
            tau_next = torch.round(t.float() * (1.0 - (i + 1) / n)).long()
            ab_next = gather_alphas(alphas, tau_next, ndim=x.dim())
            x = ab_next.sqrt() * x0_hat + (1.0 - ab_next).sqrt() * eps
        raise AssertionError("unreachable")

    def decode(self, predictor: NoisePredictor, target_x0: Float[Tensor, "N C h w"]) -> Float[Tensor, "N H W 3"]:
        """Reward images: ``predictor.decode_at(x0, reward_resolution)``, or the tiny decoder's."""
        c = self.cfg
        if c.reward_decoder is None:
            return predictor.decode_at(target_x0, c.reward_resolution)
        if self._tiny_decoder is None:
            from ddpo3d.diffusion.tiny_decoder import TinyLatentDecoder

            self._tiny_decoder = TinyLatentDecoder(c.reward_decoder, target_x0.device)
        x = target_x0
        if c.reward_resolution is not None:
            side = max(1, int(round(c.reward_resolution / predictor.pixels_per_unit)))
            x = torch.nn.functional.interpolate(x, (side, side), mode="bilinear", antialias=True, align_corners=False)
        return self._tiny_decoder.decode(x)

    # ------------------------------------------------------------------ 3. advantages
    def advantages(self, rewards: Float[Tensor, " N"], prompts: Sequence[str]) -> Float[Tensor, " N"]:
        """Rewards -> advantages (``advantage`` mode), then clipping to ``adv_clip_max``.

        ``group``: A_i = R_i - b_i with b_i the mean reward of the view's other draws (leave-one-out;
        with ``antithetic``, of the other pairs). b_i does not depend on a_i given x_t, so
        E[b_i ∇ log π(a_i)] = 0 and the estimate stays unbiased (Kool et al. 2019, "Buy 4 REINFORCE
        samples, get a baseline for free"); ``normalize_std`` divides by the group's std (GRPO,
        Shao et al. 2024, arXiv 2402.03300: biased, scale-free). ``per_prompt``: A = (R - mean_p) /
        std_p over the prompt's buffer (DDPO sec. 5); ``batch``: A = (R - mean) / std over the
        batch; ``none``: A = R.
        """
        mode = self.cfg.advantage
        if mode == "group":
            adv = group_advantages(rewards, int(self.cfg.num_samples), self.cfg.antithetic, self.cfg.normalize_std)
        elif mode == "per_prompt":
            adv = self.tracker.update(list(prompts), rewards)
        elif mode == "batch":
            adv = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
        else:
            adv = rewards.clone()
        if self.cfg.adv_clip_max is not None:
            adv = adv.clamp(-self.cfg.adv_clip_max, self.cfg.adv_clip_max)
        return adv.detach()

    # ------------------------------------------------------------------ the estimator
    def __call__(
        self,
        x0: Float[Tensor, "B C h w"],
        predictor: NoisePredictor,
        cond: Any,
        uncond: Any,
        prompts: Optional[Sequence[str]],
        reward: Callable[..., Tensor],
        t: Int[Tensor, " B"],
        noise: Float[Tensor, "B C h w"],
        x_t: Optional[Float[Tensor, "B C h w"]] = None,
        eps_pred: Optional[Float[Tensor, "B C h w"]] = None,
        guidance_scale: float = 0.0,
        generator: Optional[torch.Generator] = None,
        images: Optional[Float[Tensor, "B H W 3"]] = None,
    ) -> DDPO3DOutput:
        """Sample K actions per view, score their targets, return the policy-gradient loss.

        Args:
            x0: model-space render with grad (``predictor.encode(rgb)``).
            predictor: noise predictor.
            cond, uncond: conditions.
            prompts: one per view (for per-prompt advantages and the reward); None = "".
            reward: ``reward(images BHW3 in [0,1], prompts) -> Float[N]`` (any callable).
            t: timesteps [B] (the SDS branch's), each >= 1.
            noise: ε [B, C, h, w] (the SDS branch's).
            x_t: ``predictor.add_noise(x0, noise, t)`` with graph to x0; built if None.
            eps_pred: guided ε̂ at x_t (shared forward; with graph to x_t if ``unet_jacobian``);
                computed if None.
            guidance_scale: CFG scale for ε̂ calls made here (overridden by ``cfg.guidance_scale``).
            generator: RNG for the action noise.
            images: the renders behind ``x0``; the ``render`` target scores them directly
                (otherwise it scores ``predictor.decode(x0)``).

        Returns:
            :class:`DDPO3DOutput`.
        """
        c = self.cfg
        scale = c.guidance_scale if c.guidance_scale is not None else guidance_scale
        B, K = x0.shape[0], int(c.num_samples)
        t = t.to(x0.device).long()
        if (t < 1).any():
            raise ValueError(f"DDPO3D needs timesteps t >= 1 (got min {int(t.min())}); raise min_step_percent")
        prompts = [""] * B if prompts is None else list(prompts)
        if len(prompts) != B:
            raise ValueError(f"DDPO3D got {len(prompts)} prompts for a batch of {B} views")
        if x_t is None:
            x_t = predictor.add_noise(x0, noise, t)
        if eps_pred is None:
            with torch.set_grad_enabled(bool(c.unet_jacobian) and torch.is_grad_enabled()):
                eps_pred = predictor.predict_eps(x_t, t, cond, uncond, scale)
        if not c.unet_jacobian:
            eps_pred = eps_pred.detach()  # SDS's approximation: ε̂ is a constant in μ

        rep = lambda v: repeat_k(v, K, B)  # noqa: E731  (the one repeat-K idiom)
        cond_k, uncond_k, prompts_k = rep(cond), rep(uncond), [p for p in prompts for _ in range(K)]
        sample = self.sample(predictor, rep(x_t), rep(eps_pred), rep(t), cond_k, uncond_k, scale, generator)
        target_x0 = self.reward_target(predictor, rep(x0.detach()), sample, cond_k, uncond_k, scale)
        with torch.no_grad():
            if c.target == "render" and images is not None:
                images = rep(images.detach())
            else:
                images = self.decode(predictor, target_x0)
            rewards = torch.as_tensor(reward(images, prompts_k)).to(device=x0.device, dtype=torch.float32)
            rewards = rewards.detach().reshape(-1)
            if rewards.shape[0] != B * K:
                raise ValueError(f"reward returned {rewards.shape[0]} scores for {B * K} images")
            advantages = self.advantages(rewards, prompts_k)

        loss = policy_gradient_loss(advantages, sample.log_prob)
        diagnostics = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "advantage_mean": float(advantages.mean()),
            "advantage_std": float(advantages.std(unbiased=False)),
            "logprob": float(sample.log_prob.detach().mean()),
            "policy_std": float(sample.std.mean()),
        }
        return DDPO3DOutput(
            loss_ddpo=loss,
            log_prob=sample.log_prob,
            rewards=rewards,
            advantages=advantages,
            actions=sample.action,
            target_x0=target_x0,
            images=images,
            diagnostics=diagnostics,
        )


def group_advantages(
    rewards: Float[Tensor, " N"], k: int, antithetic: bool = False, normalize_std: bool = False
) -> Float[Tensor, " N"]:
    """Leave-one-out advantages within each view's K draws (view-major rewards, N = B·K).

    A_i = R_i - (Σ_{j∈G} R_j - Σ_{j∈P(i)} R_j) / (K - |P(i)|), with P(i) = {i} or, for antithetic
    draws, i and its mirror (no baseline when nothing is left: K = 2 antithetic, whose pair needs
    none). With ``normalize_std``: divided by the group's std (+1e-6).

    Args:
        rewards: R [B·K].
        k: K.
        antithetic: draws come in mirrored pairs (2m, 2m+1).
        normalize_std: GRPO-style scaling (biased).

    Returns:
        A [B·K].
    """
    r = rewards.reshape(-1, k)
    own = r.reshape(-1, k // 2, 2).sum(-1, keepdim=True).expand(-1, -1, 2).reshape(r.shape) if antithetic else r
    left = k - (2 if antithetic else 1)
    baseline = (r.sum(1, keepdim=True) - own) / left if left > 0 else torch.zeros_like(r)
    adv = r - baseline
    if normalize_std:
        adv = adv / (r.std(1, unbiased=False, keepdim=True) + 1e-6)
    return adv.reshape(-1)
