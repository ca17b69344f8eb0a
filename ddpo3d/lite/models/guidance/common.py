"""What the built-in runtime's diffusers guidances share (not a registered class).

``stable-diffusion-guidance`` (latent space, VAE) and ``deep-floyd-guidance`` (IF stage I,
pixel space) load a diffusers pipeline with the same threestudio options, freeze it, sample
``t`` from the same schedulable range and preview denoising the same way. The per-model
parts (which pipeline, VAE or not, IF's 6-channel output) stay in their own files.

* :class:`DiffusersGuidanceMixin`: the identical methods (``set_min_max_steps``,
  ``forward_unet``) and the pieces both guidances' ``configure`` / ``__call__`` /
  ``update_step`` use (scheduler set-up, the SDS estimator and its sampling, previews).
* functions for ``configure`` (:func:`resolve_weights_dtype`, :func:`dtype_kwarg`,
  :func:`apply_pipeline_options`, :func:`freeze`), ``__call__`` (:func:`sds_outputs`,
  :func:`eval_texts`) and ``guidance_eval`` (:func:`eval_timesteps`,
  :func:`denoise_previews`).
"""

from __future__ import annotations

import torch

import ddpo3d.lite as threestudio
from ddpo3d.lite.utils.misc import C, cleanup
from ddpo3d.objectives.sds import SDS, WEIGHTINGS
from ddpo3d.utils.typing import Any, Callable, Dict, Float, Int, List, Optional, Tensor, Tuple


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
    """Raise ``ValueError`` naming ``name`` unless it is one of :data:`WEIGHTINGS`."""
    if name not in WEIGHTINGS:
        raise ValueError(f"Unknown weighting strategy: {name!r} (use one of {WEIGHTINGS})")


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


def sds_outputs(out: Any, min_step: int, max_step: int) -> Dict[str, Any]:
    """The guidance dict threestudio systems read from an :class:`ddpo3d.objectives.sds.SDS` result.

    Args:
        out: the SDS output (``loss_sds``, ``grad``).
        min_step, max_step: the timestep range ``t`` was drawn from.

    Returns:
        ``{"loss_sds", "grad_norm", "min_step", "max_step"}``.
    """
    return {"loss_sds": out.loss_sds, "grad_norm": out.grad.norm(), "min_step": min_step, "max_step": max_step}


def eval_texts(
    noise_levels: List[float],
    elevation: Float[Tensor, " B"],
    azimuth: Float[Tensor, " B"],
    camera_distances: Float[Tensor, " B"],
) -> List[str]:
    """threestudio's caption per previewed item: noise level, elevation, azimuth, distance.

    Args:
        noise_levels: ``t / T`` per previewed item.
        elevation, azimuth, camera_distances: the batch's cameras (degrees).

    Returns:
        one ``"n..\\ne..\\na..\\nc.."`` string per previewed item.
    """
    return [
        f"n{n:.02f}\ne{e.item():.01f}\na{a.item():.01f}\nc{c.item():.02f}"
        for n, e, a, c in zip(noise_levels, elevation, azimuth, camera_distances)
    ]


def eval_timesteps(
    scheduler: Any, t_orig: Int[Tensor, " B"], batch_size: int, max_items_eval: int, device: torch.device
) -> Tuple[int, Int[Tensor, " b"], Int[Tensor, " b"], List[float]]:
    """Set ``scheduler`` to 50 steps and find, per previewed item, the first of them not larger than ``t``.

    Args:
        scheduler: a diffusers scheduler (``set_timesteps``, ``timesteps``, ``config``).
        t_orig: the SDS timesteps ``[B]``.
        batch_size: ``B``.
        max_items_eval: items to preview (``<= 0``: all).
        device: where ``t_orig`` lives.

    Returns:
        ``(bs, idxs, t, fracs)``: items previewed, their indices into ``scheduler.timesteps``,
        those timesteps, and ``t / T`` as floats.
    """
    scheduler.set_timesteps(50)
    timesteps = scheduler.timesteps.to(device)
    bs = min(max_items_eval, batch_size) if max_items_eval > 0 else batch_size
    large_enough = timesteps.expand([bs, -1]) > t_orig[:bs].unsqueeze(-1)
    idxs = torch.min(large_enough, dim=1)[1]
    t = timesteps[idxs]
    fracs = list((t / scheduler.config.num_train_timesteps).cpu().numpy())
    return bs, idxs, t, fracs


def denoise_previews(
    scheduler: Any,
    noise_pred: Tensor,
    t: Int[Tensor, " b"],
    idxs: Int[Tensor, " b"],
    latents_noisy: Tensor,
    text_embeddings: Tensor,
    n: int,
    get_noise_pred: Callable[[Tensor, Tensor, Tensor], Tensor],
    **step_kwargs: Any,
) -> Tuple[Tensor, Tensor, Tensor]:
    """One scheduler step from each previewed item's ``t``, then the rest of the schedule.

    Args:
        scheduler: the scheduler :func:`eval_timesteps` set up.
        noise_pred: the model output at ``t`` (what ``scheduler.step`` expects).
        t, idxs: from :func:`eval_timesteps`.
        latents_noisy: the noisy inputs ``x_t`` (first ``len(t)`` are previewed).
        text_embeddings: ``[cond (n), uncond (n)]`` stacked.
        n: the batch size of ``cond`` (item ``b``'s pair is rows ``b`` and ``b + n``).
        get_noise_pred: ``(x, t, text_pair) -> model output`` with CFG, for the later steps.
        **step_kwargs: extra ``scheduler.step`` arguments (``eta=1`` for DDIM).

    Returns:
        ``(latents_1step, pred_1orig, latents_final)``, each ``[bs, ...]``.
    """
    latents_1step, pred_1orig = [], []
    for b in range(len(t)):
        step = scheduler.step(noise_pred[b : b + 1], t[b], latents_noisy[b : b + 1], **step_kwargs)
        latents_1step.append(step["prev_sample"])
        pred_1orig.append(step["pred_original_sample"])
    latents_1step_t = torch.cat(latents_1step)
    latents_final = []
    for b, i in enumerate(idxs):
        latents = latents_1step_t[b : b + 1]
        text_emb = text_embeddings[[b, b + n], ...]
        for tt in scheduler.timesteps[i + 1 :]:
            latents = scheduler.step(get_noise_pred(latents, tt, text_emb), tt, latents, **step_kwargs)["prev_sample"]
        latents_final.append(latents)
    return latents_1step_t, torch.cat(pred_1orig), torch.cat(latents_final)


class DiffusersGuidanceMixin:
    """Methods identical in the diffusers guidances (threestudio's names and signatures).

    Expects ``self.device``, ``self.unet``, ``self.weights_dtype``, ``self.predictor``,
    ``self.guidance_eval`` and ``self.cfg`` with threestudio's guidance keys
    (``guidance_scale``, ``grad_clip``, ``min_step_percent``, ``max_step_percent``,
    ``weighting_strategy``, ``view_dependent_prompting``).
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

    def build_sds(self, **extra: Any) -> SDS:
        """The :class:`SDS` estimator for this config (``guidance_scale``, the step-percent
        schedules, ``weighting_strategy``, ``grad_clip``), plus ``extra`` SDS config keys."""
        cfg = self.cfg
        sds_cfg = {
            "guidance_scale": cfg.guidance_scale,
            "min_step_percent": cfg.min_step_percent,
            "max_step_percent": cfg.max_step_percent,
            "weighting_strategy": cfg.weighting_strategy,
            "grad_clip": cfg.grad_clip,
            **extra,
        }
        return SDS(sds_cfg, num_train_timesteps=self.num_train_timesteps)

    def sample_sds(
        self,
        latents: Float[Tensor, "B C h w"],
        prompt_utils: Any,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
    ) -> Tuple[Any, Float[Tensor, "BB N Nf"]]:
        """One SDS estimate (DreamFusion eq. 3 with the target trick, see
        :mod:`ddpo3d.objectives.sds`) at ``t ~ U{min_step, ..., max_step}``.

        Args:
            latents: what the diffusion model sees (latents, or IF's pixels in [-1, 1]).
            prompt_utils: the prompt processor's output.
            elevation, azimuth, camera_distances: cameras (degrees), for view-dependent prompts.

        Returns:
            ``(out, text_embeddings)``: the SDS output and ``[cond, uncond]`` embeddings.
        """
        # t from this object's range (subclasses and update_step set it)
        t = torch.randint(self.min_step, self.max_step + 1, [latents.shape[0]], dtype=torch.long, device=self.device)
        text_embeddings = prompt_utils.get_text_embeddings(
            elevation, azimuth, camera_distances, self.cfg.view_dependent_prompting
        )
        cond, uncond = text_embeddings.chunk(2)  # threestudio's order: [cond, uncond]
        self.sds.grad_clip_val = self.grad_clip_val
        return self.sds(latents, self.predictor, cond, uncond, t=t), text_embeddings

    def add_guidance_eval(
        self,
        guidance_out: Dict[str, Any],
        out: Any,
        text_embeddings: Tensor,
        elevation: Float[Tensor, " B"],
        azimuth: Float[Tensor, " B"],
        camera_distances: Float[Tensor, " B"],
    ) -> None:
        """Put ``self.guidance_eval``'s previews of ``out`` (with captions) under ``guidance_out["eval"]``."""
        eval_out = self.guidance_eval(out.t, text_embeddings, out.x_t, out.eps_pred)
        eval_out["texts"] = eval_texts(eval_out["noise_levels"], elevation, azimuth, camera_distances)
        guidance_out["eval"] = eval_out

    def update_grad_clip(self, epoch: int, global_step: int) -> None:
        """Resolve the ``grad_clip`` schedule (Hong et al. 2023, "Debiasing Scores and Prompts of
        2D Diffusion", arXiv 2303.15413) into ``self.grad_clip_val``; unchanged when unset."""
        if self.cfg.grad_clip is not None:
            self.grad_clip_val = C(self.cfg.grad_clip, epoch, global_step)

    def update_step_range(self, epoch: int, global_step: int) -> None:
        """Resolve the ``min_step_percent`` / ``max_step_percent`` schedules into the timestep range."""
        self.set_min_max_steps(
            min_step_percent=C(self.cfg.min_step_percent, epoch, global_step),
            max_step_percent=C(self.cfg.max_step_percent, epoch, global_step),
        )
