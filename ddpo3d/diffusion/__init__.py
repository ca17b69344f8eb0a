"""Noise predictors (diffusers UNet adapters, the analytic Gaussian prior) and the DDIM log-prob step."""

from ddpo3d.diffusion.analytic import AnalyticGaussianPrior
from ddpo3d.diffusion.base import NoisePredictor, cfg_combine, v_to_eps
from ddpo3d.diffusion.ddim import (
    DDIMStepWithLogProbOutput,
    ddim_sigma,
    ddim_step_with_logprob,
    gaussian_log_prob,
)
from ddpo3d.diffusion.schedule import add_noise, gather_alphas, make_alphas_cumprod
from ddpo3d.diffusion.unet import UNetNoisePredictor

__all__ = [
    "AnalyticGaussianPrior",
    "NoisePredictor",
    "UNetNoisePredictor",
    "DDIMStepWithLogProbOutput",
    "add_noise",
    "cfg_combine",
    "ddim_sigma",
    "ddim_step_with_logprob",
    "gather_alphas",
    "gaussian_log_prob",
    "make_alphas_cumprod",
    "v_to_eps",
]
