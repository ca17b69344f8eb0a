"""The DDIM step as a Gaussian policy, with the log-probability of its action (DDPO).

DDIM (Song et al. 2020, arXiv 2010.02502), eq. 12, with predicted x̂_0 and ε̂:

    x_{t-1} = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂ + σ_t z,   z ~ N(0, I),

    x̂_0 = (x_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t),

and eq. 16, σ_t(η) = η sqrt((1-ᾱ_{t-1}) / (1-ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_{t-1}).
For η > 0 the step is the Gaussian policy π(x_{t-1} | x_t) = N(μ_t, σ_t² I) whose log-density
DDPO (Black et al. 2023, arXiv 2305.13301, sec. 4.2; ``ddpo_pytorch/diffusers_patch/
ddim_with_logprob.py``) uses for its policy gradient. η = 0 is deterministic and has no density,
hence the error.

Reduction over pixel dimensions: DDPO *averages* the per-dimension Gaussian log-density over
all non-batch dims (``logprob_reduction="mean"``). The true log-density of the action is the
*sum* (``"sum"``); the mean is the sum divided by the dimension count D = C·h·w, which scales the
policy-gradient step by 1/D. Closed-form comparisons use ``"sum"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpo3d.diffusion.schedule import gather_alphas
from ddpo3d.utils.typing import Any, Float, Int, Optional, Tensor, Union


@dataclass
class DDIMStepWithLogProbOutput:
    """Result of :func:`ddim_step_with_logprob`.

    Attributes:
        prev_sample: the action x_{t-1} (sampled, or the given ``prev_sample``).
        log_prob: log π(x_{t-1} | x_t), Float[B], reduced over non-batch dims.
        prev_sample_mean: μ_t, the policy mean (differentiable w.r.t. ``sample`` / ``model_output``).
        std_dev_t: σ_t, broadcastable to the sample ([B, 1, 1, 1]).
        pred_original_sample: x̂_0 from ``model_output``.
        pred_epsilon: ε̂ (converted from the model output if needed).
    """

    prev_sample: Tensor
    log_prob: Tensor
    prev_sample_mean: Tensor
    std_dev_t: Tensor
    pred_original_sample: Tensor
    pred_epsilon: Tensor


def ddim_sigma(alpha_prod_t: Tensor, alpha_prod_t_prev: Tensor, eta: float) -> Tensor:
    """σ_t(η) = η sqrt((1-ᾱ_{t-1})/(1-ᾱ_t)) sqrt(1-ᾱ_t/ᾱ_{t-1})  (DDIM eq. 16)."""
    variance = (1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev)
    return eta * variance.clamp(min=0.0).sqrt()


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean") -> Float[Tensor, " B"]:
    """Isotropic Gaussian log-density of ``x`` (per item), reduced over non-batch dims.

    Args:
        x: the point (treated as a constant: gradients flow only into ``mean`` / ``std``).
        mean: the mean, same shape.
        std: std, broadcastable.
        reduction: ``"mean"`` (DDPO) or ``"sum"`` (the true log-density).
    """
    logp = -((x.detach() - mean) ** 2) / (2.0 * std**2) - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    logp = logp.expand_as(mean).flatten(1)
    if reduction == "mean":
        return logp.mean(1)
    if reduction == "sum":
        return logp.sum(1)
    raise ValueError(f"logprob_reduction must be 'mean' or 'sum', got {reduction!r}")


def ddim_step_with_logprob(
    scheduler_or_alphas: Any,
    model_output: Float[Tensor, "B C h w"],
    timestep: Union[int, Int[Tensor, " B"]],
    sample: Float[Tensor, "B C h w"],
    eta: float,
    prev_timestep: Optional[Union[int, Int[Tensor, " B"]]] = None,
    prev_sample: Optional[Float[Tensor, "B C h w"]] = None,
    generator: Optional[torch.Generator] = None,
    logprob_reduction: str = "mean",
    *,
    variance_noise: Optional[Tensor] = None,
    use_clipped_model_output: bool = False,
    prediction_type: Optional[str] = None,
    final_alpha_cumprod: Optional[float] = None,
    num_inference_steps: Optional[int] = None,
) -> DDIMStepWithLogProbOutput:
    """One stochastic DDIM step x_t -> x_{t-1} and log π(x_{t-1} | x_t).

    Argument order after the first follows ``diffusers.DDIMScheduler.step(model_output,
    timestep, sample, eta, ...)``.

    Args:
        scheduler_or_alphas: a diffusers ``DDIMScheduler`` (its ``alphas_cumprod``,
            ``final_alpha_cumprod``, ``config.prediction_type``, ``config.clip_sample`` and
            ``num_inference_steps`` are used), a :class:`NoisePredictor`, or an ᾱ tensor [T].
        model_output: ε̂ (or v / x_0 according to the prediction type), [B, C, h, w].
        timestep: t, an int or Int[B].
        sample: x_t.
        eta: η > 0 (the DDIM noise scale; 1 = DDPM posterior variance).
        prev_timestep: t-1 (int or Int[B]); default ``t - T // num_inference_steps``.
        prev_sample: if given, the action to score instead of sampling one.
        generator: RNG for the action noise.
        logprob_reduction: ``"mean"`` over non-batch dims (DDPO) or ``"sum"`` (true density).
        variance_noise: the standard-normal z to use (as diffusers' ``variance_noise``).
        use_clipped_model_output: recompute ε̂ from the clipped x̂_0 (diffusers' option).
        prediction_type: overrides the scheduler's (default ``"epsilon"`` for tensors/predictors).
        final_alpha_cumprod: ᾱ for prev_timestep < 0 (default: the scheduler's / predictor's,
            1.0 for a bare tensor).
        num_inference_steps: step count for the default ``prev_timestep`` (tensor input).

    Returns:
        :class:`DDIMStepWithLogProbOutput`.

    Raises:
        ValueError: η <= 0, σ_t = 0 at some item, or no way to infer ``prev_timestep``.
    """
    if not (isinstance(eta, (int, float)) and eta > 0):
        raise ValueError(
            f"ddim_step_with_logprob needs eta > 0 (got {eta!r}): with eta = 0 the DDIM step is "
            "deterministic and the action has no log-probability"
        )
    clip_sample, clip_range = False, 1.0
    if torch.is_tensor(scheduler_or_alphas):
        alphas = scheduler_or_alphas
        final = 1.0 if final_alpha_cumprod is None else final_alpha_cumprod
        ptype = prediction_type or "epsilon"
        T = alphas.shape[0]
        n_inf = num_inference_steps
    elif hasattr(scheduler_or_alphas, "config") and hasattr(scheduler_or_alphas, "alphas_cumprod"):
        sch = scheduler_or_alphas
        alphas = sch.alphas_cumprod
        final = float(sch.final_alpha_cumprod) if final_alpha_cumprod is None else final_alpha_cumprod
        ptype = prediction_type or sch.config.prediction_type
        if getattr(sch.config, "thresholding", False):
            raise NotImplementedError("dynamic thresholding is not supported by ddim_step_with_logprob")
        clip_sample = bool(getattr(sch.config, "clip_sample", False))
        clip_range = float(getattr(sch.config, "clip_sample_range", 1.0))
        T = sch.config.num_train_timesteps
        n_inf = num_inference_steps or getattr(sch, "num_inference_steps", None)
    elif hasattr(scheduler_or_alphas, "alphas_cumprod"):
        alphas = scheduler_or_alphas.alphas_cumprod
        final = (
            float(getattr(scheduler_or_alphas, "final_alpha_cumprod", 1.0))
            if final_alpha_cumprod is None
            else final_alpha_cumprod
        )
        ptype = prediction_type or "epsilon"
        T = alphas.shape[0]
        n_inf = num_inference_steps
    else:
        raise TypeError(
            "scheduler_or_alphas must be a DDIMScheduler, a NoisePredictor or an alphas_cumprod tensor, "
            f"got {type(scheduler_or_alphas).__name__}"
        )
    alphas = alphas.to(device=sample.device, dtype=torch.float32)

    if prev_timestep is None:
        if n_inf is None:
            raise ValueError(
                "prev_timestep is required unless the scheduler has num_inference_steps set "
                "(or num_inference_steps is passed)"
            )
        prev_timestep = timestep - T // n_inf

    ab_t = gather_alphas(alphas, timestep, final, ndim=sample.dim()).to(sample.dtype)
    ab_p = gather_alphas(alphas, prev_timestep, final, ndim=sample.dim()).to(sample.dtype)
    beta_t = 1.0 - ab_t

    # x̂_0 and ε̂ from the model output (DDIM eq. 12 "predicted x_0").
    if ptype == "epsilon":
        pred_x0 = (sample - beta_t.sqrt() * model_output) / ab_t.sqrt()
        pred_eps = model_output
    elif ptype == "v_prediction":
        pred_x0 = ab_t.sqrt() * sample - beta_t.sqrt() * model_output
        pred_eps = ab_t.sqrt() * model_output + beta_t.sqrt() * sample
    elif ptype == "sample":
        pred_x0 = model_output
        pred_eps = (sample - ab_t.sqrt() * pred_x0) / beta_t.sqrt()
    else:
        raise ValueError(f"prediction_type {ptype!r} must be 'epsilon', 'v_prediction' or 'sample'")
    if clip_sample:
        pred_x0 = pred_x0.clamp(-clip_range, clip_range)

    std = ddim_sigma(ab_t, ab_p, float(eta))
    if (std <= 0).any():
        raise ValueError(
            f"sigma_t = 0 for timestep {timestep} -> {prev_timestep} (alpha_prev = 1?): the step has no density"
        )
    if use_clipped_model_output:
        pred_eps = (sample - ab_t.sqrt() * pred_x0) / beta_t.sqrt()

    # μ_t = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂  (DDIM eq. 12 without the noise).
    direction = (1.0 - ab_p - std**2).clamp(min=0.0).sqrt() * pred_eps
    mean = ab_p.sqrt() * pred_x0 + direction

    if prev_sample is None:
        if variance_noise is not None and generator is not None:
            raise ValueError("pass either generator or variance_noise, not both")
        if variance_noise is None:
            gen_device = generator.device if generator is not None else model_output.device
            variance_noise = torch.randn(
                model_output.shape, generator=generator, device=gen_device, dtype=model_output.dtype
            ).to(model_output.device)
        prev_sample = mean + std * variance_noise
    prev_sample = prev_sample.detach()

    log_prob = gaussian_log_prob(prev_sample, mean, std, logprob_reduction)
    std_out = std if std.dim() > 0 else std.expand(sample.shape[0]).view(-1, *([1] * (sample.dim() - 1)))
    return DDIMStepWithLogProbOutput(
        prev_sample=prev_sample,
        log_prob=log_prob,
        prev_sample_mean=mean,
        std_dev_t=std_out,
        pred_original_sample=pred_x0,
        pred_epsilon=pred_eps,
    )
