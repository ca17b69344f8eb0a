"""Every shipped config's alignment term is measurably active with its default settings.

For each shipped config with an alignment objective, its guidance block (SDS keys + objective)
is evaluated once on a tiny seeded model of the same kind (latent SD UNet + VAE, pixel IF UNet,
the toy world's analytic prior) and the ratio of gradient norms the system will send, per view,
``align_to_sds_grad_ratio · lambda_align / lambda_sds``, must lie in [0.01, 3]. The same block
in ``strength_mode: lambda`` shows why the mode exists: its raw ratio (what a plain λ = 1 sends)
is orders of magnitude smaller for the policy gradient.
"""

import glob
import os

import pytest
import torch

torch.set_num_threads(1)

from omegaconf import OmegaConf  # noqa: E402

from ddpo3d.diffusion import AnalyticGaussianPrior, UNetNoisePredictor  # noqa: E402
from ddpo3d.objectives import RewardGuidedSDS  # noqa: E402
from ddpo3d.objectives.sds import SDSConfig  # noqa: E402
from ddpo3d.utils.schedule import C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    glob.glob(os.path.join(ROOT, "custom", "threestudio-ddpo3d", "configs", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "configs", "toy", "*.yaml"))
    + glob.glob(os.path.join(ROOT, "custom", "threestudio-ddpo3d", "configs", "rewards", "*-sd.yaml"))
)
LAMBDA = {
    "ddpo3d": "lambda_ddpo",
    "reward-backprop": "lambda_reward",
    "dreamfl": "lambda_dreamfl",
    "reward-tilted": "lambda_tilt",
}
#: terms that replace SDS (their configs set lambda_sds: 0): no ratio to SDS to measure
REPLACES_SDS = ("reward-sds", "dreamdpo")


def brightness(images, prompts):
    """Differentiable mean luma (both objectives can use it)."""
    w = torch.tensor([0.299, 0.587, 0.114])
    return (images * w).sum(-1).flatten(1).mean(1)


brightness.differentiable = True


def tiny_predictor(kind):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    latent = kind == "sd"
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4 if latent else 3,
        out_channels=4 if latent else 6,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    )
    vae = None
    if latent:
        vae = AutoencoderKL(
            block_out_channels=(4, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=2,
            sample_size=16,
        )
    sch = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False)
    for m in (unet, vae):
        if m is not None:
            m.eval().requires_grad_(False)
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod, resolution=16 if latent else 8, sample_latents=False)
    emb = torch.randn(2, 1, 5, 8)
    return pred, emb[0].expand(2, -1, -1), emb[1].expand(2, -1, -1)


def shipped(path):
    cfg = OmegaConf.load(path)
    system = cfg.get("system", {})
    guidance = system.get("guidance", {})
    guidance = OmegaConf.create(OmegaConf.to_container(guidance, resolve=True))  # e.g. ${trainer.max_steps}
    objective = OmegaConf.to_container(guidance.get("objective", OmegaConf.create({"type": "none"})))
    return cfg, system, guidance, objective


ALIGNED = [
    pytest.param(p, id=os.path.relpath(p, ROOT), marks=[] if "toy" in p else [pytest.mark.slow])
    for p in CONFIGS
    if shipped(p)[3].get("type", "ddpo3d") not in ("none", *REPLACES_SDS)
    # MVDream's x0-reconstruction SDS on the multi-view twin: tests/test_mvdream.py runs those configs
    and "mvdream" not in str(shipped(p)[1].get("guidance_type", ""))
]


@pytest.mark.parametrize("path", ALIGNED)
def test_shipped_config_alignment_is_measurably_active(path, tmp_path):
    cfg, system, guidance, objective = shipped(path)
    if objective.get("reward_decoder") is not None:  # TAESD is not on test machines: its tiny twin
        from ddpo3d.testing.tiny_taesd import write_tiny_taesd

        objective["reward_decoder"] = write_tiny_taesd(str(tmp_path / "tiny-taesd"))
    gtype = system.get("guidance_type", "")
    kind = "toy" if "toy" in gtype else "if" if "deep-floyd" in gtype else "sd"
    sds_keys = {k: OmegaConf.to_container(guidance)[k] for k in SDSConfig.__dataclass_fields__ if k in guidance}
    if kind == "toy":
        pred = AnalyticGaussianPrior(sigma_data=float(guidance.get("sigma_data", 0.05)))
        g = torch.Generator().manual_seed(1)
        cond = pred.encode(torch.rand(2, 16, 16, 3, generator=g))[:, None]
        uncond = torch.cat([cond, pred.encode(torch.rand(2, 16, 16, 3, generator=g))[:, None]], 1)
        size = 16
    else:
        pred, cond, uncond = tiny_predictor(kind)
        size = 16
    if float(sds_keys.get("guidance_scale", 0.0)) == 0.0:
        uncond = None
    obj = RewardGuidedSDS({**sds_keys, "objective": objective})
    loss = system.get("loss", {})
    lam_align = float(C(loss.get(LAMBDA[objective.get("type", "ddpo3d")], 1.0), 0, 10**9))
    lam_sds = float(C(loss.get("lambda_sds", 1.0), 0, 10**9))
    img = (0.3 + 0.4 * torch.rand(2, size, size, 3, generator=torch.Generator().manual_seed(2))).requires_grad_(True)
    ratios, raws = [], []
    for seed in range(3):
        out = obj(
            img, pred, cond, uncond, ["a hamburger"] * 2, brightness, generator=torch.Generator().manual_seed(seed)
        )
        ratios.append(out["align_to_sds_grad_ratio"] * lam_align / lam_sds)
        raws.append(out["align_raw_to_sds_grad_ratio"])
    sent = sorted(ratios)[1]
    assert 0.01 <= sent <= 3.0 * (1 + 1e-4), (path, ratios, raws)  # the ratio mode sets it to float precision
