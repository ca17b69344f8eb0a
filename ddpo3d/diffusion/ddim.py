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

Scope: ε-prediction (v-prediction models are converted to ε by the predictor, see
``ddpo3d.diffusion.base.v_to_eps``), explicit ``prev_timestep``, no x̂_0 clipping: what the
objectives call. Its equality with ``diffusers.DDIMScheduler.step`` is tested through a small
adapter in the tests.
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
        prev_sample: the action x_{t-1} (sampled, or the given ``prev_sample``), detached.
        log_prob: log π(x_{t-1} | x_t), Float[B], reduced over non-batch dims.
        prev_sample_mean: μ_t, the policy mean (differentiable w.r.t. ``sample`` / ``model_output``).
        std_dev_t: σ_t, broadcastable to the sample ([B, 1, 1, 1]).
        pred_original_sample: x̂_0 from ε̂.
    """

    prev_sample: Tensor
    log_prob: Tensor
    prev_sample_mean: Tensor
    std_dev_t: Tensor
    pred_original_sample: Tensor


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

    Returns:
        log N(x; mean, std² I) per item.
    """
    logp = -((x.detach() - mean) ** 2) / (2.0 * std**2) - torch.log(std) - 0.5 * math.log(2.0 * math.pi)
    logp = logp.expand_as(mean).flatten(1)
    if reduction == "mean":
        return logp.mean(1)
    if reduction == "sum":
        return logp.sum(1)
    raise ValueError(f"logprob_reduction must be 'mean' or 'sum', got {reduction!r}")


def ddim_step_with_logprob(
    alphas: Any,
    model_output: Float[Tensor, "B C h w"],
    timestep: Union[int, Int[Tensor, " B"]],
    sample: Float[Tensor, "B C h w"],
    eta: float,
    prev_timestep: Union[int, Int[Tensor, " B"]],
    prev_sample: Optional[Float[Tensor, "B C h w"]] = None,
    generator: Optional[torch.Generator] = None,
    logprob_reduction: str = "mean",
    *,
    variance_noise: Optional[Tensor] = None,
    final_alpha_cumprod: Optional[float] = None,
) -> DDIMStepWithLogProbOutput:
    """One stochastic DDIM step x_t -> x_{t-1} and log π(x_{t-1} | x_t).

    Argument order after the first follows ``diffusers.DDIMScheduler.step(model_output,
    timestep, sample, eta, ...)``.

    Args:
        alphas: a :class:`NoisePredictor` (its ``alphas_cumprod`` and ``final_alpha_cumprod``)
            or an ᾱ tensor [T].
        model_output: ε̂, [B, C, h, w].
        timestep: t, an int or Int[B].
        sample: x_t.
        eta: η > 0 (the DDIM noise scale; 1 = DDPM posterior variance).
        prev_timestep: t-1 (int or Int[B]); < 0 means past the last step (ᾱ = final_alpha_cumprod).
        prev_sample: if given, the action to score instead of sampling one.
        generator: RNG for the action noise.
        logprob_reduction: ``"mean"`` over non-batch dims (DDPO) or ``"sum"`` (true density).
        variance_noise: the standard-normal z to use (as diffusers' ``variance_noise``).
        final_alpha_cumprod: ᾱ for prev_timestep < 0 (default: the predictor's, 1.0 for a tensor).

    Returns:
        :class:`DDIMStepWithLogProbOutput`.

    Raises:
        ValueError: η <= 0 or σ_t = 0 at some item.
    """
    if not (isinstance(eta, (int, float)) and eta > 0):
        raise ValueError(
            f"ddim_step_with_logprob needs eta > 0 (got {eta!r}): with eta = 0 the DDIM step is "
            "deterministic and the action has no log-probability"
        )
    if torch.is_tensor(alphas):
        final = 1.0 if final_alpha_cumprod is None else final_alpha_cumprod
    elif hasattr(alphas, "alphas_cumprod"):
        final = float(alphas.final_alpha_cumprod) if final_alpha_cumprod is None else final_alpha_cumprod
        alphas = alphas.alphas_cumprod
    else:
        raise TypeError(f"alphas must be a NoisePredictor or an alphas_cumprod tensor, got {type(alphas).__name__}")
    alphas = alphas.to(device=sample.device, dtype=torch.float32)
    ab_t = gather_alphas(alphas, timestep, final, ndim=sample.dim()).to(sample.dtype)
    ab_p = gather_alphas(alphas, prev_timestep, final, ndim=sample.dim()).to(sample.dtype)

    # x̂_0 = (x_t - sqrt(1-ᾱ_t) ε̂) / sqrt(ᾱ_t)  (DDIM eq. 12, "predicted x_0")
    pred_x0 = (sample - (1.0 - ab_t).sqrt() * model_output) / ab_t.sqrt()
    std = ddim_sigma(ab_t, ab_p, float(eta))
    if (std <= 0).any():
        raise ValueError(
            f"sigma_t = 0 for timestep {timestep} -> {prev_timestep} (alpha_prev = 1?): the step has no density"
        )
    # μ_t = sqrt(ᾱ_{t-1}) x̂_0 + sqrt(1 - ᾱ_{t-1} - σ_t²) ε̂  (DDIM eq. 12 without the noise)
    mean = ab_p.sqrt() * pred_x0 + (1.0 - ab_p - std**2).clamp(min=0.0).sqrt() * model_output

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
    )
