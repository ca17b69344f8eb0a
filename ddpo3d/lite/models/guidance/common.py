"""What the built-in runtime's diffusers guidances share (not a registered class).

``stable-diffusion-guidance`` (latent space, VAE) and ``deep-floyd-guidance`` (IF stage I,
pixel space) load a diffusers pipeline with the same threestudio options, freeze it, sample
``t`` from the same schedulable range and turn a guided ε̂ into the SDS loss the same way.
This is the runtime's own implementation of threestudio 0.2.3's ``compute_grad_sds``
semantics, written against the paper, not a call into :mod:`ddpo3d.objectives`: the tests
that compare the extension's objective with the stock guidance compare two implementations.

* :class:`DiffusersGuidanceMixin`: the identical methods (``set_min_max_steps``,
  ``forward_unet``, ``update_step``), ``t`` sampling and :meth:`~DiffusersGuidanceMixin.sds_loss`.
* functions for ``configure``: :func:`resolve_weights_dtype`, :func:`dtype_kwarg`,
  :func:`apply_pipeline_options`, :func:`freeze`, :func:`check_weighting_strategy`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import ddpo3d.lite as threestudio
from ddpo3d.lite.utils.base import unsupported
from ddpo3d.lite.utils.misc import C, cleanup
from ddpo3d.utils.typing import Any, Dict, Float, Int, Optional, Tensor, Union

#: threestudio's ``weighting_strategy`` names.
WEIGHTING_STRATEGIES = ("sds", "uniform", "fantasia3d")


def dtype_kwarg(dtype: torch.dtype) -> Dict[str, Any]:
    """``dtype=`` for diffusers versions that read it (and deprecate ``torch_dtype``), else
    ``torch_dtype=`` (detected by diffusers' ``_resolve_dtype`` helper).

    Args:
        dtype: the weights' dtype.

    Returns:
        the keyword argument for ``DiffusionPipeline.from_pretrained``.
    """
    from diffusers.pipelines import pipeline_utils

    return {"dtype": dtype} if hasattr(pipeline_utils, "_resolve_dtype") else {"torch_dtype": dtype}


def check_weighting_strategy(name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless it is one of :data:`WEIGHTING_STRATEGIES`."""
    if name not in WEIGHTING_STRATEGIES:
        raise ValueError(f"Unknown weighting strategy: {name!r} (use one of {WEIGHTING_STRATEGIES})")


def resolve_weights_dtype(half_precision_weights: bool, device: torch.device) -> torch.dtype:
    """fp16 when asked for and on CUDA; fp32 otherwise (with a notice when fp16 was asked for on CPU).

    Args:
        half_precision_weights: the config key of the same name.
        device: where the pipeline runs.

    Returns:
        the dtype the pipeline's weights are loaded in.
    """
    on_cuda = device.type == "cuda"
    if half_precision_weights and not on_cuda:
        threestudio.info("half_precision_weights=true: fp16 needs CUDA; using float32 weights on CPU")
    return torch.float16 if (half_precision_weights and on_cuda) else torch.float32


def apply_pipeline_options(pipe: Any, cfg: Any, device: torch.device) -> None:
    """threestudio's pipeline options, then free cached memory.

    ``enable_memory_efficient_attention`` is a notice (PyTorch 2 attention already is);
    ``enable_sequential_cpu_offload`` needs CUDA (an error on CPU); ``enable_attention_slicing``
    slices by 1; ``enable_channels_last_format`` puts the UNet in channels-last memory format.

    Args:
        pipe: the loaded diffusers pipeline.
        cfg: a guidance config with the four ``enable_*`` keys.
        device: where the pipeline runs.
    """
    if cfg.enable_memory_efficient_attention:
        threestudio.info("PyTorch 2 uses memory efficient attention by default.")
    if cfg.enable_sequential_cpu_offload:
        if device.type != "cuda":
            raise NotImplementedError("enable_sequential_cpu_offload=true needs CUDA (and accelerate)")
        pipe.enable_sequential_cpu_offload()
    if cfg.enable_attention_slicing:
        pipe.enable_attention_slicing(1)
    if cfg.enable_channels_last_format:
        pipe.unet.to(memory_format=torch.channels_last)
    cleanup()


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode with every parameter's ``requires_grad`` off.

    Args:
        module: a pipeline component (UNet, VAE).

    Returns:
        the same module.
    """
    module = module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class DiffusersGuidanceMixin:
    """Methods identical in the diffusers guidances (threestudio's names and signatures).

    Expects ``self.device``, ``self.unet``, ``self.weights_dtype`` and ``self.cfg`` with
    threestudio's guidance keys (``guidance_scale``, ``grad_clip``, ``min_step_percent``,
    ``max_step_percent``, ``weighting_strategy``, ``view_dependent_prompting``).
    """

    def set_min_max_steps(self, min_step_percent: float = 0.02, max_step_percent: float = 0.98) -> None:
        """The timestep range ``[int(T·min), int(T·max)]`` SDS samples from."""
        self.min_step = int(self.num_train_timesteps * min_step_percent)
        self.max_step = int(self.num_train_timesteps * max_step_percent)

    def forward_unet(
        self, latents: Float[Tensor, "..."], t: Tensor, encoder_hidden_states: Float[Tensor, "..."]
    ) -> Float[Tensor, "..."]:
        """``unet(x, t, text)`` in the weights' dtype, returned in the input's dtype."""
        input_dtype = latents.dtype
        return self.unet(
            latents.to(self.weights_dtype),
            t.to(self.weights_dtype),
            encoder_hidden_states=encoder_hidden_states.to(self.weights_dtype),
        ).sample.to(input_dtype)

    def init_timesteps(self, scheduler: Any) -> None:
        """Take ``scheduler``'s training schedule: ``scheduler``, ``num_train_timesteps``, the
        default ``[min_step, max_step]`` (until the first ``update_step``), ``alphas``
        (``alphas_cumprod`` on this device) and ``grad_clip_val = None``."""
        self.scheduler = scheduler
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.set_min_max_steps()
        self.alphas: Float[Tensor, " T"] = scheduler.alphas_cumprod.to(self.device)
        self.grad_clip_val: Optional[float] = None

    def check_call(self, rgb_as_latents: bool, guidance_eval: bool, latents_ok: bool) -> None:
        """Reject call options the runtime does not implement (``guidance_eval`` previews;
        latents for a pixel-space model)."""
        if guidance_eval:
            raise unsupported("guidance_eval", True)
        if rgb_as_latents and not latents_ok:
            raise ValueError(f"rgb_as_latents=True: there is no latent space in {type(self).__name__} (pixel space)")

    def sample_t(self, batch_size: int) -> Int[Tensor, " B"]:
        """``t ~ U{min_step, ..., max_step}`` (both ends included), one per item."""
        return torch.randint(self.min_step, self.max_step + 1, [batch_size], dtype=torch.long, device=self.device)

    def sds_weight(self, t: Int[Tensor, " B"]) -> Union[float, Float[Tensor, "B 1 1 1"]]:
        """w(t): ``sds`` σ_t² = 1 - ᾱ_t (DreamFusion, arXiv 2209.14988, eq. 3), ``uniform`` 1,
        ``fantasia3d`` sqrt(ᾱ_t)(1 - ᾱ_t) (Fantasia3D, arXiv 2303.13873)."""
        a = self.alphas[t].view(-1, 1, 1, 1)
        if self.cfg.weighting_strategy == "sds":
            return 1 - a
        if self.cfg.weighting_strategy == "uniform":
            return 1
        return a**0.5 * (1 - a)

    def sds_loss(
        self,
        latents: Float[Tensor, "B C h w"],
        noise_pred: Float[Tensor, "B C h w"],
        noise: Float[Tensor, "B C h w"],
        t: Int[Tensor, " B"],
    ) -> Dict[str, Any]:
        """The SDS loss for one guided ε̂ at ``x_t = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε``.

        ``grad = w(t) (ε̂ - ε)`` (DreamFusion eq. 3, the UNet Jacobian dropped), NaNs zeroed,
        clamped to ``±grad_clip_val`` when set (Hong et al. 2023, arXiv 2303.15413). With
        ``target = (x - grad)`` detached, ``L = 0.5 / B · ||x - target||²`` has
        ``∂L/∂x = grad / B``: backprop injects the batch-averaged SDS gradient into ``x``.

        Args:
            latents: the model-space input ``x`` with its graph to the render.
            noise_pred: the guided ε̂ (no graph).
            noise: ε.
            t: the timesteps.

        Returns:
            ``{"loss_sds", "grad_norm", "min_step", "max_step"}`` (threestudio's keys).
        """
        grad = torch.nan_to_num(self.sds_weight(t) * (noise_pred - noise))
        if self.grad_clip_val is not None:
            grad = grad.clamp(-self.grad_clip_val, self.grad_clip_val)
        target = (latents - grad).detach()
        loss_sds = 0.5 * F.mse_loss(latents, target, reduction="sum") / latents.shape[0]
        return {"loss_sds": loss_sds, "grad_norm": grad.norm(), "min_step": self.min_step, "max_step": self.max_step}

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Resolve the ``grad_clip`` and ``min_step_percent`` / ``max_step_percent`` schedules."""
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = C(self.cfg.grad_clip, epoch, global_step)
        self.set_min_max_steps(
            min_step_percent=C(self.cfg.min_step_percent, epoch, global_step),
            max_step_percent=C(self.cfg.max_step_percent, epoch, global_step),
        )
