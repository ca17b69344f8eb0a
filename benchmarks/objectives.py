"""Benchmark of the alignment objectives.

1. Cost: one full step (render leaf -> encode -> objective -> backward) with a tiny Stable
   Diffusion UNet (attention only at the lowest level) at 64x64 latents, B=4: ``sds``, the DDPO3D
   variants (targets, unet_jacobian false / true, K), ``reward-backprop``, and one row per
   registered objective (``ddpo3d.objectives.combined.OBJECTIVES``, so objectives added later
   appear by themselves) with its default options, timed at its ``start_step``; time per step
   (median of interleaved rounds) and memory, each as a ratio to ``sds`` measured in the same process.
2. Estimator quality: on the analytic prior, the cosine between one step's DDPO3D estimate and
   the exact gradient of its target, by variance-reduction variant and K samples per view.
3. ``--arch sd21``: Stable Diffusion 2.1-base's UNet and VAE built from their published configs
   with random weights (compute does not depend on the weights; nothing is downloaded), B=1, a
   64² render resized to 512, CFG: SDS against the shipped ``dreamfusion-ddpo`` objective block,
   parsed from its YAML (a TAESD-architecture decoder with random weights stands in for
   ``reward_decoder`` when its weights are not on the machine), with the aesthetic reward's
   compute (ViT-L/14 at 224² + MLP head); plus the same block with ``reward_decoder: null``, and
   where each step's time goes (UNet, VAE encoder, VAE decoder, tiny decoder, reward model,
   backward). ``--quick`` (one timed round, unless ``--rounds``: models built, one warm-up and one
   timed step of each of the three methods) took 5 min 15 s of wall time on the project's idle
   2-core machine (8 min of CPU time; 42 minutes at a 1-min load average of 8 to 17).

Prints Markdown tables; the last two lines of parts 1-2 are exactly

    ddpo3d-full-jacobian/sds step-time ratio: <float>
    ddpo3d/sds step-time ratio: <float>

(the second: unet_jacobian false, target x0_pred, K=1, JPEG reward). Targets: <= 2.5, <= 1.3.
Part 3's last line is ``sd21 ddpo3d/sds step-time ratio: X`` (target <= 1.3).
On CPU the ratios use process CPU time, on CUDA wall time.

Usage::

    python benchmarks/objectives.py                      # tiny random SD on CPU (parts 1 and 2)
    python benchmarks/objectives.py --skip-cosine        # part 1 only
    python benchmarks/objectives.py --device cuda --sd-path /path/to/stable-diffusion-v1-5
    python benchmarks/objectives.py --arch sd21 --quick --threads 2   # part 3
    python benchmarks/objectives.py --arch sd21 --half --device cuda  # part 3 in fp16 (benchmarks/gpu_check.py)
    python benchmarks/objectives.py --arch sd21 --smoke               # part 3's code path, tiny models (seconds)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from ddpo3d.diffusion import AnalyticGaussianPrior, UNetNoisePredictor  # noqa: E402
from ddpo3d.objectives import DDPO3D, RewardGuidedSDS  # noqa: E402


# ---------------------------------------------------------------------------- rewards
def jpeg_reward():
    """The project's JPEG-compressibility reward, or a local stand-in if rewards are missing."""
    try:
        from ddpo3d.rewards import build_reward

        return build_reward({"type": "jpeg-compressibility"}), "ddpo3d.rewards jpeg-compressibility"
    except Exception as exc:  # pragma: no cover - only when the rewards package is absent
        import io

        from PIL import Image

        def reward(images, prompts):
            out = []
            for im in (images.detach().clamp(0, 1) * 255).round().byte().cpu().numpy():
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="JPEG", quality=95)
                out.append(-buf.tell() / 1000.0)
            return torch.tensor(out)

        reward.differentiable = False
        reward.name = "jpeg-local"
        return reward, f"local JPEG size (ddpo3d.rewards unavailable: {exc})"


class ConvReward(torch.nn.Module):
    """Differentiable stand-in reward (fixed random conv + pooling) for reward-backprop timing."""

    differentiable = True
    name = "conv-standin"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(32, 1),
        )

    def forward(self, images, prompts):
        return self.net(images.permute(0, 3, 1, 2)).flatten()


# ---------------------------------------------------------------------------- models
def tiny_sd(device, latent):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=2 * latent,
    )
    sch = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    for m in (unet, vae):
        m.to(device).eval().requires_grad_(False)
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod, weights_dtype=torch.float32, sample_latents=False)
    emb = torch.randn(2, 77, 8, device=device)
    return pred, emb[:1], emb[1:], 2 * latent, "tiny random SD UNet (4,8) + VAE [4,8]"


def real_sd(path, device, dtype):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        path, local_files_only=True, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe.to(device)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.eval().requires_grad_(False)
    pred = UNetNoisePredictor(
        pipe.unet,
        pipe.vae,
        pipe.scheduler.alphas_cumprod,
        prediction_type=pipe.scheduler.config.prediction_type,
        weights_dtype=dtype,
        resolution=512,
        sample_latents=False,
    )
    with torch.no_grad():
        ids = pipe.tokenizer(
            ["a photo of a hamburger", ""],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        emb = pipe.text_encoder(ids.to(device))[0].float()
    return pred, emb[:1], emb[1:], 512, f"Stable Diffusion from {path}"


# ---------------------------------------------------------------------------- memory
class PeakMemory:
    """Memory of one step.

    ``saved_mb``: bytes of the distinct storages autograd saves for backward during the forward
    (the activation memory a method adds; deterministic, any device). ``peak_mb``: CUDA allocator
    peak above the step's start (CUDA only; CPU has no allocator statistics).
    """

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.peak_mb = float("nan")

    def __enter__(self):
        self.seen, self.total = set(), 0

        def pack(t):
            try:
                storage = t.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key not in self.seen:
                    self.seen.add(key)
                    self.total += storage.nbytes()
            except (RuntimeError, NotImplementedError):
                pass
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.saved_mb = self.total / 2**20
        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20


# ---------------------------------------------------------------------------- part 1: cost
K1 = {"type": "ddpo3d", "num_samples": 1, "advantage": "per_prompt"}
DEFAULT = "ddpo3d x0_pred affine K=1 (jacobian false)"
JACOBIAN = "ddpo3d x0_pred affine K=1 (jacobian true)"
METHODS = [
    ("sds", {"type": "none"}, "jpeg"),
    (DEFAULT, K1, "jpeg"),
    (JACOBIAN, {**K1, "unet_jacobian": True}, "jpeg"),
    ("ddpo3d x0_pred action_unet K=1", {**K1, "x0_from": "action_unet"}, "jpeg"),
    ("ddpo3d x0_pred affine K=4 (group baseline)", {"type": "ddpo3d", "num_samples": 4}, "jpeg"),
    ("ddpo3d rollout (5 DDIM steps) K=1", {**K1, "target": "rollout", "rollout_steps": 5}, "jpeg"),
    ("ddpo3d render K=1", {**K1, "target": "render"}, "jpeg"),
    ("reward-backprop", {"type": "reward-backprop"}, "conv"),
]
REGISTRY_SUFFIX = " (defaults, conv reward)"


def registry_methods() -> list:
    """One row per registered objective (``combined.OBJECTIVES``, so later ones appear by themselves):
    its default options, on the differentiable conv stand-in reward (every objective accepts it)."""
    from ddpo3d.objectives.combined import OBJECTIVES

    seen = [(block, reward) for _, block, reward in METHODS]
    return [
        (kind + REGISTRY_SUFFIX, {"type": kind}, "conv")
        for kind in OBJECTIVES
        if kind != "none" and ({"type": kind}, "conv") not in seen
    ]


def activate(obj) -> int:
    """Move a freshly built objective to its ``start_step`` (DreamFL starts at 6000 by default), so
    the timed step is the step that runs the term; returns that step."""
    step = int(getattr(getattr(obj.objective, "cfg", None), "start_step", 0) or 0)
    obj.update_step(0, step)
    return step


def bench_cost(args, device):
    if args.sd_path:
        dtype = torch.float16 if args.half else torch.float32
        pred, cond1, uncond1, res, what = real_sd(args.sd_path, device, dtype)
    else:
        pred, cond1, uncond1, res, what = tiny_sd(device, args.latent)
    B = args.batch
    cond, uncond = cond1.expand(B, -1, -1), uncond1.expand(B, -1, -1)
    jpeg, jpeg_what = jpeg_reward()
    conv = ConvReward().to(device)
    prompts = ["a photo of a hamburger"] * B
    import warnings

    objs, starts = {}, {}
    methods = METHODS + registry_methods()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, block, _ in methods:
            objs[name] = RewardGuidedSDS({"guidance_scale": 100.0, "objective": block})
            starts[name] = activate(objs[name])
    gen = torch.Generator(device=device).manual_seed(0)
    render = torch.rand(B, res, res, 3, device=device, generator=gen)

    def step(name, reward):
        images = render.clone().requires_grad_(True)  # stands in for the renderer's output
        out = objs[name](images, pred, cond, uncond, prompts, reward, generator=gen)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {name: [] for name, _, _ in methods}
    cpu_times = {name: [] for name, _, _ in methods}
    mems = {}
    rewards = {"jpeg": jpeg, "conv": conv}
    for name, _, r in methods:  # warm-up (and memory, measured once per method)
        step(name, rewards[r])
        with PeakMemory(device) as pm:
            step(name, rewards[r])
        mems[name] = (pm.saved_mb, pm.peak_mb)
    for _ in range(args.rounds):  # interleaved rounds: drift on a shared CPU hits all methods alike
        for name, _, r in methods:
            t0, c0 = time.perf_counter(), time.process_time()
            step(name, rewards[r])
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    return med, cpu, mems, what, jpeg_what, res, methods, starts


# ---------------------------------------------------------------------------- part 2: variance
VARIANTS = [
    ("raw reward", {"advantage": "none"}),
    ("batch z-score", {"advantage": "batch"}),
    ("leave-one-out", {"advantage": "group"}),
    ("leave-one-out + std (GRPO, biased)", {"advantage": "group", "normalize_std": True}),
    ("antithetic", {"advantage": "none", "antithetic": True}),
    ("antithetic + leave-one-out", {"advantage": "group", "antithetic": True}),
]


def bench_cosine(args):
    """Cosine of one step's estimate (B=4 views, D=3x16x16) with the exact target gradient.

    Gaussian prior, reward on the decoded x̂0, unet_jacobian false: with the linear reward the
    target (ε̂ frozen) has gradient ∂R/∂x0 = w/2 per view for every t and ε (x̂0(μ) = x0 exactly);
    the quadratic reward -||img - c||² has exact gradient -(img(x̂0(μ)) - c) per view, i.e.
    -(decode(x0) - c) with the decode's 1/2.
    """
    torch.manual_seed(0)
    prior = AnalyticGaussianPrior(sigma_data=0.3, clamp_decode=False)
    B, shape = 4, (3, 16, 16)
    cond = 0.5 * torch.randn(1, 1, *shape)
    uncond = torch.cat([cond, 0.5 * torch.randn(1, 1, *shape)], 1)
    w = torch.randn(16, 16, 3)
    centre = torch.rand(16, 16, 3)

    def linear(images, prompts):
        return ((images - 0.5) * w).flatten(1).sum(1)

    def quadratic(images, prompts):
        return -((images - centre) ** 2).flatten(1).sum(1)

    rows = []
    for reward_name, reward in (("linear", linear), ("quadratic", quadratic)):
        for K in args.cosine_k:
            res = {}
            for name, variant in VARIANTS:
                if K < 2 and (variant.get("antithetic") or variant["advantage"] == "group"):
                    continue
                cos = []
                gen = torch.Generator().manual_seed(1)
                for _trial in range(args.cosine_trials):
                    obj = DDPO3D({"num_samples": K, "adv_clip_max": None, **variant})
                    x0 = (0.3 * torch.randn(B, *shape, generator=gen)).requires_grad_(True)
                    t = torch.randint(20, 981, (B,), generator=gen)
                    out = obj(
                        x0,
                        prior,
                        cond.expand(B, -1, -1, -1, -1),
                        uncond.expand(B, -1, -1, -1, -1),
                        None,
                        reward,
                        t,
                        torch.randn(B, *shape, generator=gen),
                        guidance_scale=7.5,
                        generator=gen,
                    )
                    (g,) = torch.autograd.grad(out.loss_ddpo, x0)
                    if reward_name == "linear":
                        exact = (w.permute(2, 0, 1) / 2).flatten().repeat(B)
                    else:
                        exact = (-(prior.decode(x0.detach()) - centre)).permute(0, 3, 1, 2).flatten()
                    cos.append(float(torch.nn.functional.cosine_similarity(-g.flatten(), exact, dim=0)))
                res[name] = (statistics.mean(cos), statistics.stdev(cos) / len(cos) ** 0.5)
            rows.append((reward_name, K, res))
    return rows


def print_cost(args, device):
    """Run and print part 1; returns the per-method times the ratios use."""
    med, cpu, mems, what, jpeg_what, res, methods, starts = bench_cost(args, device)
    # On CPU the ratios use process CPU time: with other processes on the cores, wall time
    # mostly measures the scheduler; CPU time of this (single-threaded) process measures the work.
    use_cpu = device.type == "cpu"
    key = cpu if use_cpu else med
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"## Objective step cost ({what}, B={args.batch}, render {res}x{res}, device {device}, "
        f"{args.threads} thread(s), median of {args.rounds} interleaved rounds)\n"
    )
    if device.type == "cpu":
        print(
            f"CPU shared with other processes: 1-min load average {load:.1f} on {os.cpu_count()} cores. "
            "Wall time on a loaded CPU is noisy; ratios use this process's CPU time (torch runs "
            "single-threaded here, so CPU time is the work done).\n"
        )
    print(
        "Memory: 'saved' = distinct storages autograd keeps for backward during the step (activation "
        "memory, deterministic); 'peak' = CUDA allocator peak (n/a on CPU).\n"
    )
    print(
        f"JPEG reward: {jpeg_what}. reward-backprop and the '{REGISTRY_SUFFIX.strip()}' rows (one per registered "
        "objective, its default options, timed at its start_step) use a differentiable conv stand-in reward.\n"
    )
    print(
        "| method | wall (ms) | CPU time (ms) | time ratio to sds | saved for backward (MB) | saved ratio | peak (MB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_t, base_m = key["sds"], max(mems["sds"][0], 1e-9)
    for name, _, _ in methods:
        saved, peak = mems[name]
        peak_s = "n/a" if peak != peak else f"{peak:.1f}"
        label = name + (f" at step {starts[name]}" if starts.get(name) else "")
        print(
            f"| {label} | {med[name] * 1000:.1f} | {cpu[name] * 1000:.1f} | {key[name] / base_t:.2f} | "
            f"{saved:.1f} | {saved / base_m:.2f} | {peak_s} |"
        )

    return key


# ---------------------------------------------------------------------------- part 3: the SD 2.1 architecture
def sd21_models(device, dtype):
    """Stable Diffusion 2.1-base's UNet and VAE from their published configs, random weights (nothing downloaded)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        norm_num_groups=32,
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        act_fn="silu",
        scaling_factor=0.18215,
    )
    sch = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    for m in (unet, vae):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    pred = UNetNoisePredictor(unet, vae, sch.alphas_cumprod, weights_dtype=dtype, resolution=512)
    emb = torch.randn(2, 77, 1024, device=device)
    return pred, emb[:1], emb[1:]


def smoke_models(device, dtype):
    """``--smoke``: the tiny UNet and VAE of part 1 behind the same interface as :func:`sd21_models`."""
    pred, cond, uncond, _, _ = tiny_sd(device, 8)
    pred = UNetNoisePredictor(
        pred.unet.to(dtype=dtype), pred.vae.to(dtype=dtype), pred.alphas_cumprod, weights_dtype=dtype, resolution=16
    )
    return pred, cond, uncond


class ViTL14Reward(torch.nn.Module):
    """The aesthetic reward's compute with random weights: open_clip ViT-L/14 image tower at 224² + the MLP head."""

    differentiable = True
    name = "aesthetic-architecture"

    def __init__(self, device, dtype):
        super().__init__()
        import open_clip

        from ddpo3d.rewards.aesthetic import AestheticHead

        torch.manual_seed(0)
        self.visual = open_clip.create_model("ViT-L-14", pretrained=None).visual.to(device=device, dtype=dtype)
        self.head = AestheticHead(768).to(device=device, dtype=dtype)
        self.dtype = dtype
        self.requires_grad_(False).eval()

    def forward(self, images, prompts):
        x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), (224, 224), mode="bilinear", antialias=True)
        emb = self.visual(x.to(self.dtype))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        return self.head(emb).float().flatten()


def shipped_block(name="dreamfusion-ddpo.yaml"):
    """The shipped config's objective block and CFG scale, parsed from its YAML (what a run uses)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(os.path.join(os.path.dirname(__file__), "..", "custom", "threestudio-ddpo3d", "configs", name))
    return OmegaConf.to_container(cfg.system.guidance.objective, resolve=True), float(
        cfg.system.guidance.guidance_scale
    )


def tiny_decoder_stand_in(block, folder, device, dtype):
    """The block with ``reward_decoder`` resolvable here: the named weights if on this machine, else a
    random-weight decoder of TAESD's architecture (64 channels, blocks (3, 3, 3, 1), 8x upsampling)
    saved to ``folder``; compute does not depend on the weights.

    Returns:
        ``(block, description)``; the description is None when the block has no tiny decoder.
    """
    spec = block.get("reward_decoder")
    if spec is None:
        return block, None
    from ddpo3d.diffusion.tiny_decoder import resolve_tiny_decoder
    from ddpo3d.weights import WeightsNotFoundError

    try:
        resolve_tiny_decoder(spec)
        return block, f"{spec} (local weights)"
    except WeightsNotFoundError:
        from ddpo3d.testing.tiny_taesd import write_tiny_taesd

        write_tiny_taesd(folder, levels=4, channels=64, blocks=(3, 3, 3, 1))
        return {**block, "reward_decoder": folder}, f"{spec} architecture, random weights (not on this machine)"


class StageTimer:
    """Process (CPU) or wall time spent inside given modules' forwards, via forward hooks.

    Nested stages are not subtracted (the stages timed here do not nest). ``wall`` on CUDA
    synchronises at each boundary.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.total: dict = {}
        self.handles = []

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()

    def watch(self, name: str, module) -> None:
        if module is None:
            return
        start = {}

        def pre(mod, args):
            start[id(mod)] = self.now()

        def post(mod, args, out):
            self.total[name] = self.total.get(name, 0.0) + self.now() - start.pop(id(mod), self.now())

        self.handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def take(self) -> dict:
        out, self.total = self.total, {}
        return out


def bench_sd21(args, device):
    """SDS vs the shipped dreamfusion-ddpo objective block on the SD 2.1-base architecture.

    Besides the step times, each step is split into stages by forward hooks (UNet forward, VAE
    encoder forward, VAE decoder forward, tiny decoder forward, reward-model forward), the
    backward pass, and the rest (the remainder of the forward: resizing, noising, the policy's
    log-prob, the estimator's own small backward for the ratio mode).
    """
    import tempfile
    import warnings

    dtype = torch.float16 if args.half else torch.float32
    t0 = time.perf_counter()
    if args.smoke:  # the same code path with tiny models: a plumbing check, the numbers mean nothing
        pred, cond, uncond = smoke_models(device, dtype)
        reward = ConvReward().to(device)
    else:
        pred, cond, uncond = sd21_models(device, dtype)
        reward = ViTL14Reward(device, dtype)
    build_s = time.perf_counter() - t0
    block, scale = shipped_block()
    tmp = tempfile.mkdtemp(prefix="sd21-taesd-")
    if args.smoke:  # tiny sizes throughout: the tiny TAESD twin, reward images at 16²
        from ddpo3d.testing.tiny_taesd import write_tiny_taesd

        block = {**block, "reward_resolution": 16}
        if block.get("reward_decoder") is not None:
            block["reward_decoder"] = write_tiny_taesd(os.path.join(tmp, "tiny-taesd"))
    block_run, decoder_what = tiny_decoder_stand_in(block, os.path.join(tmp, "taesd"), device, dtype)
    variants = [("sds", {"type": "none"}), ("dreamfusion-ddpo (shipped block)", block_run)]
    if block.get("reward_decoder") is not None:  # what reward_decoder: null gives (the SD VAE decoder)
        variants.append(("same, reward_decoder null (SD VAE decoder)", {**block_run, "reward_decoder": None}))
    if not args.quick:
        full = {**block_run, "reward_resolution": None, "reward_decoder": None}
        variants.append(("same, SD VAE decoder at 512 (reward_resolution null)", full))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        objs = {name: RewardGuidedSDS({"guidance_scale": scale, "objective": b}) for name, b in variants}
    gen = torch.Generator(device=device).manual_seed(0)
    render = torch.rand(1, 64, 64, 3, device=device, generator=gen)  # threestudio's 64² render, B=1
    prompts = ["a photo of a hamburger"]
    cuda = device.type == "cuda"
    timer = StageTimer(cuda)
    timer.watch("UNet fwd", pred.unet)
    timer.watch("VAE encoder fwd", pred.vae.encoder)
    timer.watch("VAE decoder fwd", pred.vae.decoder)
    timer.watch("reward model fwd", reward)

    def step(name):
        images = render.clone().requires_grad_(True)
        a = timer.now()
        out = objs[name](images, pred, cond, uncond, prompts, reward, generator=gen)
        loss = sum(v for k, v in out.items() if k.startswith("loss_"))
        b = timer.now()
        loss.backward()
        c = timer.now()
        stages = timer.take()
        stages["backward"] = c - b
        stages["forward (all)"] = b - a
        return stages, out

    wall = {n: [] for n, _ in variants}
    cpu = {n: [] for n, _ in variants}
    stages = {n: {} for n, _ in variants}
    ratios = {}
    peak = {}
    for name, _ in variants:  # warm-up
        step(name)
        objective = objs[name].objective
        tiny = getattr(objective, "_tiny_decoder", None)  # built lazily on the first decode
        if tiny is not None:
            timer.watch("tiny decoder fwd", tiny.model)
    for _ in range(args.rounds):
        for name, _ in variants:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t, c = time.perf_counter(), time.process_time()
            st, out = step(name)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            for k, v in st.items():
                stages[name].setdefault(k, []).append(v)
            ratios.setdefault(name, []).append(float(out.get("align_to_sds_grad_ratio", 0.0)))
            if cuda:
                peak[name] = torch.cuda.max_memory_allocated() / 2**20
    key = cpu if not cuda else wall
    med = {n: statistics.median(v) for n, v in key.items()}
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    if args.smoke:
        print("## --smoke: the SD 2.1 code path with TINY models (plumbing check; the numbers mean nothing)\n")
    print(
        f"## SD 2.1-base architecture (random weights), B=1, 64² render resized to 512, CFG {scale:g}, "
        f"{dtype}, device {device}, {torch.get_num_threads()} thread(s), median of {args.rounds} round(s); "
        f"models built in {build_s:.0f} s; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(1 / 5 / 15 min) on {os.cpu_count()} cores\n"
    )
    print(f"Shipped block (custom/threestudio-ddpo3d/configs/dreamfusion-ddpo.yaml): {block}")
    if decoder_what:
        print(f"\nReward decoder: {decoder_what}.")
    what = "the conv stand-in (--smoke)" if args.smoke else "the aesthetic reward's compute (open_clip ViT-L/14"
    what += "" if args.smoke else " image tower at 224² + MLP head), random weights"
    print(f"\nReward: {what}.\n")
    unit = "CPU time" if not cuda else "wall"
    print(f"| method | {unit} (s) | wall (s) | ratio to sds | align/sds grad ratio | peak (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, _ in variants:
        pk = f"{peak[name]:.0f}" if name in peak else "n/a"
        print(
            f"| {name} | {med[name]:.2f} | {statistics.median(wall[name]):.2f} | {med[name] / med['sds']:.3f} | "
            f"{statistics.median(ratios[name]):.3g} | {pk} |"
        )
    names = ["UNet fwd", "VAE encoder fwd", "VAE decoder fwd", "tiny decoder fwd", "reward model fwd"]
    print(f"\n### Where the time goes ({unit}, s, median per step; 'rest of fwd' = forward minus the named stages)\n")
    print("| method | " + " | ".join(names) + " | rest of fwd | backward |")
    print("|---|" + "---:|" * (len(names) + 2))
    for name, _ in variants:
        st = {k: statistics.median(v) for k, v in stages[name].items()}
        named = [st.get(n, 0.0) for n in names]
        rest = st["forward (all)"] - sum(named)
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in named) + f" | {rest:.2f} | {st['backward']:.2f} |")
    print()
    print(f"sd21 ddpo3d/sds step-time ratio: {med['dreamfusion-ddpo (shipped block)'] / med['sds']:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sd-path", default=None, help="local Stable Diffusion folder (diffusers layout)")
    ap.add_argument("--half", action="store_true", help="fp16 weights with --sd-path")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--latent", type=int, default=64, help="latent size of the tiny model")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5; 1 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--cosine-trials", type=int, default=30)
    ap.add_argument("--cosine-k", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--skip-cost", action="store_true", help="only the estimator-quality table")
    ap.add_argument("--skip-cosine", action="store_true", help="only the cost table")
    ap.add_argument(
        "--arch", choices=["tiny", "sd21"], default="tiny", help="sd21: SD 2.1-base UNet+VAE, random weights"
    )
    ap.add_argument("--quick", action="store_true", help="--arch sd21: one timed round, fewer variants")
    ap.add_argument("--smoke", action="store_true", help="--arch sd21 with tiny models (plumbing check, seconds)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.rounds is None:
        args.rounds = 1 if args.quick and args.arch == "sd21" else 5
    if args.arch == "sd21":
        bench_sd21(args, device)
        return

    if not args.skip_cost:
        key = print_cost(args, device)
    rows = [] if args.skip_cosine else bench_cosine(args)
    if rows:
        print_cosine(args, rows)
    if not args.skip_cost:
        base_t = key["sds"]
        print()
        print(f"ddpo3d-full-jacobian/sds step-time ratio: {key[JACOBIAN] / base_t:.3f}")
        print(f"ddpo3d/sds step-time ratio: {key[DEFAULT] / base_t:.3f}")


def print_cosine(args, rows) -> None:
    """Print part 2's table."""
    print(
        f"\n## Cosine(one step's estimate, exact gradient), analytic prior, B=4, D=3x16x16, "
        f"x0_pred, unet_jacobian false, mean ± standard error over {args.cosine_trials} steps\n"
    )
    names = [n for n, _ in VARIANTS]
    print("| reward | K | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for reward_name, K, res_k in rows:
        cells = [f"{res_k[n][0]:.3f} ± {res_k[n][1]:.3f}" if n in res_k else "n/a" for n in names]
        print(f"| {reward_name} | {K} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
