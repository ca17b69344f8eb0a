"""The extension against the REAL threestudio (0.2.3) base classes, on CPU.

Runs only when threestudio can be imported; otherwise every test skips with the reason.
Two ways to provide it:

* threestudio installed (importable as ``threestudio``, with its CUDA packages), or
* a plain checkout: ``DDPO3D_THREESTUDIO_SRC=/path/to/threestudio`` plus
  ``DDPO3D_THREESTUDIO_STUBS=1``. The test then writes CPU placeholder modules for
  threestudio's CUDA-only / heavy imports (tinycudann, nerfacc, nvdiffrast, envlight, igl,
  xatlas, mcubes, pysdf, wandb, tomesd, controlnet_aux, einops, IPython, and a small numpy/PIL
  stand-in for the few ``cv2`` calls of its image saver) into ``tmp_path`` and puts them
  first on ``sys.path``. Placeholder classes raise when instantiated, so any code path that
  really needs one of those packages fails loudly instead of silently doing nothing.

Example::

    git -C <threestudio clone> archive HEAD | tar -x -C /tmp/threestudio-src
    DDPO3D_THREESTUDIO_SRC=/tmp/threestudio-src DDPO3D_THREESTUDIO_STUBS=1 \\
        pytest tests/test_threestudio_compat.py -m threestudio

``DDPO3D_COMPAT_REPORT=<file>`` keeps the JSON report of the checks.

All checks run in ONE subprocess (``DDPO3D_HOST=threestudio``; the rest of the suite uses the
built-in runtime and ``ddpo3d.host`` is bound once per interpreter), which is this file run as
a script; it writes a JSON report the tests below assert on. In that subprocess
threestudio's ``get_device`` (CUDA) is pointed at the CPU in every threestudio module that
bound it, the extension is loaded with threestudio's own ``launch.load_custom_module`` (or
the same importlib-spec semantics when ``launch.py`` is not at hand), and then:

1. every extension class registers (names prefixed ``ddpo3d-``, no clash) and the host
   names resolve to threestudio's own classes;
2. ``ddpo3d-stable-diffusion-guidance`` builds on a tiny local SD pipeline over threestudio's
   ``StableDiffusionGuidance`` and, fed threestudio's ``stable-diffusion-prompt-processor``
   output, returns finite ``loss_sds`` / ``loss_ddpo`` (and ``loss_reward`` for
   reward-backprop) whose gradients reach the rgb input;
3. with ``reward.weight: 0`` its ``loss_sds`` and rgb gradient (of ``loss_sds``) equal
   threestudio's plain ``stable-diffusion-guidance`` for the same global seed (see
   ``_check_sds_equal`` for the two harness adjustments this needs);
   ``ddpo3d-deep-floyd-guidance`` likewise over threestudio's ``DeepFloydGuidance`` on a tiny
   IF pipeline (``_check_deep_floyd``);
4. ``ddpo3d-system`` (subclass of threestudio's ``DreamFusion``) with the extension's Gaussian
   splat geometry/renderer and threestudio's ``no-material`` / ``solid-color-background`` /
   ``random-camera-datamodule`` trains 2 steps, validates and tests under a Lightning
   ``Trainer``, writing its metrics, curves, grids and turntable video; threestudio's own
   ``magic3d-system`` (coarse) trains a step with the DDPO3D guidance unchanged.

What this cannot check on CPU: threestudio's CUDA geometry/renderers (``implicit-volume`` and
``nerf-volume-renderer`` need tinycudann and nerfacc), half precision, the 512-px SD path with
real weights, and the perp-neg / guidance_eval paths (rejected by the DDPO3D guidances).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXT_DIR = REPO / "custom" / "threestudio-ddpo3d"

pytestmark = [pytest.mark.threestudio, pytest.mark.slow]

# ----------------------------------------------------------------------------- placeholders
_PLACEHOLDER = '''"""CPU placeholder for a dependency of threestudio that is CUDA-only or not installed here."""
_NAME = __name__


class _Placeholder:
    _qual = "?"

    def __init__(self, *args, **kwargs):
        raise RuntimeError(f"{self._qual} is a CPU placeholder: this code path needs the real package")


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    cls = type(name, (_Placeholder,), {"_qual": f"{_NAME}.{name}"})
    globals()[name] = cls
    return cls
'''

_EXTRA = {
    # threestudio.utils.misc.cleanup() calls it after every model load; nothing to free on CPU
    "tinycudann": "\n\ndef free_temporary_memory():\n    return None\n",
    # matplotlib asks an imported IPython for its shell and version
    "IPython": "\n\ndef get_ipython():\n    return None\n\n\nversion_info = (8, 24, 0)\n",
}

# the cv2 calls of threestudio.utils.saving (SaverMixin), in numpy + PIL
_CV2 = '''"""CPU stand-in for the OpenCV calls threestudio's SaverMixin makes (numpy + PIL)."""
import numpy as _np

COLOR_RGB2BGR, COLOR_BGR2RGB, COLOR_RGBA2BGRA, COLOR_BGRA2RGBA = 0, 1, 2, 3
INTER_LINEAR = 1
COLORMAP_JET = 2


def cvtColor(img, code):
    if code in (COLOR_RGB2BGR, COLOR_BGR2RGB):
        return _np.ascontiguousarray(img[..., ::-1])
    if code in (COLOR_RGBA2BGRA, COLOR_BGRA2RGBA):
        return _np.ascontiguousarray(img[..., [2, 1, 0, 3]])
    raise NotImplementedError(f"cv2 stand-in: colour conversion {code}")


def imwrite(path, img):
    from PIL import Image

    img = _np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[..., [2, 1, 0, 3][: img.shape[2]]]
    Image.fromarray(_np.ascontiguousarray(img)).save(path)
    return True


def imread(path, flags=None):
    from PIL import Image

    return _np.ascontiguousarray(_np.asarray(Image.open(path).convert("RGB"))[..., ::-1])


def resize(img, size, interpolation=INTER_LINEAR):
    from PIL import Image

    return _np.asarray(Image.fromarray(img).resize(tuple(size), Image.BILINEAR))


def applyColorMap(img, code):
    import matplotlib

    img = _np.asarray(img)
    rgb = matplotlib.colormaps["jet"](img[..., 0] if img.ndim == 3 else img)[..., :3]
    return _np.ascontiguousarray((rgb * 255).astype(_np.uint8)[..., ::-1])
'''

PLACEHOLDER_MODULES = [
    "tinycudann",
    "nerfacc",
    "nerfacc.data_specs",
    "nerfacc.estimators",
    "nerfacc.estimators.base",
    "nerfacc.pdf",
    "nerfacc.volrend",
    "nvdiffrast",
    "nvdiffrast.torch",
    "envlight",
    "igl",
    "xatlas",
    "mcubes",
    "pysdf",
    "wandb",
    "tomesd",
    "controlnet_aux",
    "einops",
    "IPython",
    "IPython.display",
]


def write_placeholders(root: Path) -> Path:
    """Write the placeholder packages under ``root`` (only for modules that do not import here)."""
    root.mkdir(parents=True, exist_ok=True)
    for mod in PLACEHOLDER_MODULES + ["cv2"]:
        top = mod.split(".")[0]
        if importlib.util.find_spec(top) is not None and not (root / top).exists():
            continue  # the real package is installed: use it
        d = root.joinpath(*mod.split("."))
        d.mkdir(parents=True, exist_ok=True)
        text = _CV2 if mod == "cv2" else _PLACEHOLDER + _EXTRA.get(mod, "")
        (d / "__init__.py").write_text(text)
    return root


# ----------------------------------------------------------------------------- the subprocess
def _run_checks(out_path: str, work: str, src: str | None) -> None:
    """Everything that touches threestudio; writes ``{check: {"ok", "error", ...data}}`` to out_path."""
    import traceback

    os.environ["DDPO3D_HOST"] = "threestudio"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(1)
    report: dict = {}
    t0 = time.time()

    def save():
        Path(out_path).write_text(json.dumps(report, indent=1, default=str))

    try:
        import threestudio
    except Exception as exc:  # installed but unusable (e.g. no CUDA packages): the tests skip
        report["import"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        save()
        return
    report["import"] = {
        "ok": True,
        "version": getattr(threestudio, "__version__", "?"),
        "file": threestudio.__file__,
        "seconds": time.time() - t0,
    }

    # threestudio's get_device() is CUDA; point every module that bound it at the CPU
    import threestudio.utils.misc as ts_misc

    original = ts_misc.get_device
    for name, mod in list(sys.modules.items()):
        if (name == "threestudio" or name.startswith("threestudio.")) and getattr(mod, "get_device", None) is original:
            mod.get_device = lambda: torch.device("cpu")

    # threestudio's SD prompt processor loads the text encoder with device_map="auto", which
    # transformers only accepts with accelerate installed; without it, load on the CPU.
    if importlib.util.find_spec("accelerate") is None:
        import threestudio.models.prompt_processors.stable_diffusion_prompt_processor as sdpp

        real_clip = sdpp.CLIPTextModel

        class _CLIPTextModelNoDeviceMap:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                kwargs.pop("device_map", None)
                return real_clip.from_pretrained(*args, **kwargs)

        sdpp.CLIPTextModel = _CLIPTextModelNoDeviceMap

    os.makedirs(work, exist_ok=True)
    os.chdir(work)  # the prompt processor writes .threestudio_cache/ relative to cwd
    if src and os.path.isdir(os.path.join(src, "load")) and not os.path.exists("load"):
        os.symlink(os.path.join(src, "load"), "load")  # load/prompt_library.json, as from threestudio's dir

    def check(name):
        def deco(fn):
            start = time.time()
            try:
                data = fn() or {}
                report[name] = {"ok": True, **data}
            except Exception:
                report[name] = {"ok": False, "error": traceback.format_exc()}
            report[name]["seconds"] = time.time() - start
            save()
            return fn

        return deco

    @check("load")
    def _check_load():
        before = set(threestudio.__modules__)
        launch_py = os.path.join(src, "launch.py") if src else None
        if launch_py and os.path.isfile(launch_py):
            spec = importlib.util.spec_from_file_location("threestudio_launch", launch_py)
            launch = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(launch)
            loaded = launch.load_custom_module(str(EXT_DIR))
            how = "launch.load_custom_module"
        else:  # the same semantics as launch.load_custom_module
            spec = importlib.util.spec_from_file_location(EXT_DIR.name, str(EXT_DIR / "__init__.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[EXT_DIR.name] = module
            spec.loader.exec_module(module)
            loaded, how = True, "importlib spec (launch.py not found)"
        added = sorted(set(threestudio.__modules__) - before)
        from ddpo3d import host

        lazy = {}
        for attr in host._LAZY:
            cls = getattr(host, attr)
            lazy[attr] = f"{cls.__module__}.{cls.__qualname__}"
        import threestudio.utils.base as ts_base

        bases = {}
        for name in added:
            cls = threestudio.find(name)
            bases[name] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__[1:]]
        return {
            "loaded": loaded,
            "how": how,
            "added": added,
            "lazy": lazy,
            "host": host.HOST,
            "host_base_is_threestudio": host.BaseObject is ts_base.BaseObject
            and host.BaseModule is ts_base.BaseModule
            and host.register is threestudio.register
            and host.C is ts_misc.C,
            "host_device": str(host.get_device()),
            "bases": bases,
        }

    if not report["load"]["ok"] or not report["load"]["loaded"]:
        return

    from ddpo3d.testing.tiny_sd import build_tiny_sd_pipeline

    tiny = build_tiny_sd_pipeline(os.path.join(work, "tiny-sd"))
    state: dict = {}

    def tiny_if_pipeline() -> str:
        if "tiny_if" not in state:
            from ddpo3d.testing.tiny_if import build_tiny_if_pipeline

            try:
                state["tiny_if"] = build_tiny_if_pipeline(os.path.join(work, "tiny-if"))
            except Exception as exc:  # the tiny T5 tokenizer needs transformers 5 (and no sentencepiece)
                state["tiny_if"] = exc
        if isinstance(state["tiny_if"], Exception):
            raise _Unavailable(f"the tiny IF test pipeline does not build here: {state['tiny_if']!r}")
        return state["tiny_if"]

    def prompt_utils():
        if "pu" not in state:
            pp = threestudio.find("stable-diffusion-prompt-processor")(
                {"prompt": "a red apple", "pretrained_model_name_or_path": tiny, "spawn": False}
            )
            state["pu"] = pp()
        return state["pu"]

    def guidance(**cfg):
        base = {"pretrained_model_name_or_path": tiny, "half_precision_weights": False, "guidance_scale": 7.5}
        return threestudio.find(cfg.pop("_type", "ddpo3d-stable-diffusion-guidance"))({**base, **cfg})

    cams = (torch.tensor([10.0, 20.0]), torch.tensor([0.0, 90.0]), torch.tensor([2.0, 2.0]))

    def grad_of(loss, x):
        (g,) = torch.autograd.grad(loss, x, retain_graph=True)
        return {"finite": bool(torch.isfinite(g).all()), "abs_sum": float(g.abs().sum())}

    @check("guidance_ddpo3d")
    def _check_guidance():
        import threestudio.models.guidance.stable_diffusion_guidance as ts_sdg
        import threestudio.models.prompt_processors.base as ts_ppb

        pu = prompt_utils()
        g = guidance(
            reward={"type": "brightness"}, objective={"type": "ddpo3d", "num_samples": 2, "advantage": "batch"}
        )
        g.update_step(0, 0)
        torch.manual_seed(0)
        rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
        out = g(rgb, pu, *cams, rgb_as_latents=False)
        base_keys = set(ts_sdg.StableDiffusionGuidance.Config.__dataclass_fields__)
        return {
            "is_subclass": issubclass(type(g), ts_sdg.StableDiffusionGuidance),
            "prompt_utils_type": f"{type(pu).__module__}.{type(pu).__qualname__}",
            "prompt_utils_is_threestudio": isinstance(pu, ts_ppb.PromptProcessorOutput),
            "missing_base_keys": sorted(base_keys - set(g.cfg.keys())),
            "device": str(g.device),
            "keys": sorted(out),
            "loss_sds": float(out["loss_sds"]),
            "loss_ddpo": float(out["loss_ddpo"]),
            "grad_sds": grad_of(out["loss_sds"], rgb),
            "grad_ddpo": grad_of(out["loss_ddpo"], rgb),
            "reward_prompts": g.reward_prompts_for(pu, *cams),
        }

    @check("guidance_reward_backprop")
    def _check_reward_backprop():
        g = guidance(reward={"type": "brightness"}, objective={"type": "reward-backprop"})
        g.update_step(0, 0)
        torch.manual_seed(0)
        rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
        out = g(rgb, prompt_utils(), *cams)
        return {
            "keys": sorted(out),
            "loss_reward": float(out["loss_reward"]),
            "grad_reward": grad_of(out["loss_reward"], rgb),
        }

    @check("sds_equal")
    def _check_sds_equal():
        """Our loss_sds (alignment off) vs threestudio's stable-diffusion-guidance, same seed.

        Two harness adjustments, both outside the code under test:

        * threestudio's ``__call__`` resizes renders to a hard-coded 512² (latents 64²); ours to
          the UNet's native size (``sample_size`` × VAE factor: 512 for SD 1.5 / 2.1-base, 64 for
          the tiny pipeline). The 512/64 sizes in threestudio's module are mapped to the tiny
          pipeline's 64/32 so both run on the same latents.
        * threestudio draws ε with ``torch.randn_like(latents)``, which follows the memory layout
          of the VAE's output (channels-last with this torch/diffusers), while our objective
          draws ``torch.randn(shape)``: same distribution, values permuted for a given seed.
          Both guidances' ``encode_images`` outputs are made contiguous so the two draws read the
          RNG stream in the same order; the UNet inputs (x_t, t, text embeddings) are captured
          and compared, so any other difference in how t or ε are drawn still fails.
        """
        import threestudio.models.guidance.stable_diffusion_guidance as ts_sdg
        import torch.nn.functional as F

        pu = prompt_utils()
        ours = guidance(reward={"type": "brightness", "weight": 0.0}, objective={"type": "ddpo3d"})
        plain = guidance(_type="stable-diffusion-guidance")
        latent_res = ours.resolution // 2 ** (len(ours.vae.config.block_out_channels) - 1)

        class _SizeMap:
            def __getattr__(self, name):
                return getattr(F, name)

            @staticmethod
            def interpolate(x, size=None, *args, **kwargs):
                size = {(512, 512): (ours.resolution,) * 2, (64, 64): (latent_res,) * 2}.get(
                    tuple(size) if size is not None else None, size
                )
                return F.interpolate(x, size, *args, **kwargs)

        real_f = ts_sdg.F
        ts_sdg.F = _SizeMap()
        results = []
        raw_layout = None
        try:
            torch.manual_seed(1)
            rgb = torch.rand(2, 32, 32, 3)
            for g in (plain, ours):
                g.update_step(0, 0)
                enc = g.encode_images

                def encode_contiguous(imgs, _enc=enc):
                    nonlocal raw_layout
                    lat = _enc(imgs)
                    raw_layout = raw_layout or {"contiguous": lat.is_contiguous(), "stride": list(lat.stride())}
                    return lat.contiguous()

                g.encode_images = encode_contiguous
                seen = []
                hook = g.unet.register_forward_pre_hook(
                    lambda m, a, k, _s=seen: _s.append(
                        (
                            a[0].detach().clone(),
                            torch.as_tensor(a[1]).float().clone(),
                            k["encoder_hidden_states"].detach().clone(),
                        )
                    ),
                    with_kwargs=True,
                )
                x = rgb.clone().requires_grad_(True)
                torch.manual_seed(1234)
                out = g(x, pu, *cams)
                (gx,) = torch.autograd.grad(out["loss_sds"], x)
                hook.remove()
                results.append((out, gx, seen))
        finally:
            ts_sdg.F = real_f
        (o_ts, g_ts, s_ts), (o_us, g_us, s_us) = results
        return {
            "loss_sds_threestudio": float(o_ts["loss_sds"]),
            "loss_sds_ours": float(o_us["loss_sds"]),
            "grad_max_abs_diff": float((g_ts - g_us).abs().max()),
            "grad_max_abs": float(g_ts.abs().max()),
            "unet_calls": [len(s_ts), len(s_us)],
            "x_t_max_abs_diff": float((s_ts[0][0] - s_us[0][0]).abs().max()),
            "t_equal": bool(torch.equal(s_ts[0][1], s_us[0][1])),
            "emb_equal": bool(torch.equal(s_ts[0][2], s_us[0][2])),
            "grad_norm_threestudio": float(o_ts["grad_norm"]),
            "grad_norm_ours": float(o_us["grad_norm"]),
            "ours_keys": sorted(o_us),
            "vae_latent_layout": raw_layout,
        }

    @check("deep_floyd")
    def _check_deep_floyd():
        """``ddpo3d-deep-floyd-guidance`` over threestudio's ``DeepFloydGuidance`` on a tiny IF.

        threestudio's ``deep-floyd-prompt-processor`` loads T5 in 8 bit (bitsandbytes, CUDA);
        here its loader gets ``load_in_8bit`` / ``variant`` / ``device_map`` removed and float32
        weights, the rest of the processor (directions, cache, output) is threestudio's. As for
        SD, threestudio's hard-coded 64 px is mapped to the tiny UNet's 32 px; its ``randn_like``
        is left alone (both sides draw ε with ``randn_like`` on the resized, channels-last render),
        so the stock and aligned ``loss_sds`` can be compared exactly.
        """
        import threestudio.models.guidance.deep_floyd_guidance as ts_dfg
        import threestudio.models.prompt_processors.deepfloyd_prompt_processor as dfpp
        import torch.nn.functional as F

        tiny_if = tiny_if_pipeline()
        real_t5 = dfpp.T5EncoderModel

        class _T5Float32:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                for key in ("load_in_8bit", "variant", "device_map"):
                    kwargs.pop(key, None)
                kwargs["torch_dtype"] = torch.float32
                return real_t5.from_pretrained(*args, **kwargs)

        dfpp.T5EncoderModel = _T5Float32
        try:
            pu = threestudio.find("deep-floyd-prompt-processor")(
                {"prompt": "a red apple", "pretrained_model_name_or_path": tiny_if, "spawn": False}
            )()
        finally:
            dfpp.T5EncoderModel = real_t5
        base = {"pretrained_model_name_or_path": tiny_if, "half_precision_weights": False, "guidance_scale": 7.5}
        ours = threestudio.find("ddpo3d-deep-floyd-guidance")(
            {
                **base,
                "reward": {"type": "brightness"},
                "objective": {"type": "ddpo3d", "num_samples": 2, "advantage": "batch"},
            }
        )
        ours.update_step(0, 0)
        torch.manual_seed(0)
        rgb = torch.rand(2, 32, 32, 3, requires_grad=True)
        out = ours(rgb, pu, *cams)
        data = {
            "is_subclass": issubclass(type(ours), ts_dfg.DeepFloydGuidance),
            "keys": sorted(out),
            "loss_sds": float(out["loss_sds"]),
            "loss_ddpo": float(out["loss_ddpo"]),
            "grad_sds": grad_of(out["loss_sds"], rgb),
            "grad_ddpo": grad_of(out["loss_ddpo"], rgb),
        }

        zero = threestudio.find("ddpo3d-deep-floyd-guidance")(
            {**base, "reward": {"type": "brightness", "weight": 0.0}, "objective": {"type": "ddpo3d"}}
        )
        plain = threestudio.find("deep-floyd-guidance")(base)
        res = int(ours.resolution)

        class _SizeMap:
            def __getattr__(self, name):
                return getattr(F, name)

            @staticmethod
            def interpolate(x, size=None, *args, **kwargs):
                size = (res, res) if size is not None and tuple(size) == (64, 64) else size
                return F.interpolate(x, size, *args, **kwargs)

        real = (ts_dfg.F, ts_dfg.torch)
        ts_dfg.F = _SizeMap()  # randn_like stays threestudio's: both sides draw in the render's layout
        losses, grads = [], []
        try:
            for g in (plain, zero):
                g.update_step(0, 0)
                x = rgb.detach().clone().requires_grad_(True)
                torch.manual_seed(4321)
                o = g(x, pu, *cams)
                (gx,) = torch.autograd.grad(o["loss_sds"], x)
                losses.append(float(o["loss_sds"]))
                grads.append(gx)
        finally:
            ts_dfg.F, ts_dfg.torch = real
        data.update(
            {
                "loss_sds_threestudio": losses[0],
                "loss_sds_ours": losses[1],
                "grad_max_abs_diff": float((grads[0] - grads[1]).abs().max()),
                "grad_max_abs": float(grads[0].abs().max()),
            }
        )
        return data

    @check("system_fit")
    def _check_system():
        import pytorch_lightning as pl
        import threestudio.systems.dreamfusion as ts_df
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(
            {
                "geometry_type": "ddpo3d-gaussian-splat",
                "geometry": {"num_points": 200, "init_radius": 0.5},
                "material_type": "no-material",
                "material": {},
                "background_type": "solid-color-background",
                "background": {},
                "renderer_type": "ddpo3d-gaussian-splat-renderer",
                "renderer": {"backend": "torch"},
                "prompt_processor_type": "stable-diffusion-prompt-processor",
                "prompt_processor": {"prompt": "a red apple", "pretrained_model_name_or_path": tiny, "spawn": False},
                "guidance_type": "ddpo3d-stable-diffusion-guidance",
                "guidance": {
                    "pretrained_model_name_or_path": tiny,
                    "half_precision_weights": False,
                    "guidance_scale": 7.5,
                    "reward": {"type": "brightness"},
                    "objective": {"type": "ddpo3d", "num_samples": 2, "advantage": "batch"},
                },
                "loss": {
                    "lambda_sds": 1.0,
                    "lambda_ddpo": 1.0,
                    "lambda_orient": 0.0,
                    "lambda_sparsity": 0.0,
                    "lambda_opaque": 0.0,
                },
                "optimizer": {"name": "Adam", "args": {"lr": 0.01}},
            }
        )
        system = threestudio.find("ddpo3d-system")(cfg, resumed=False)
        save_dir = os.path.join(work, "trial", "save")
        system.set_save_dir(save_dir)
        means0 = system.geometry.means.detach().clone()
        dm = threestudio.find("random-camera-datamodule")(
            {
                "width": 32,
                "height": 32,
                "batch_size": 2,
                "eval_width": 32,
                "eval_height": 32,
                "n_val_views": 1,
                "n_test_views": 2,
            }
        )
        trainer = pl.Trainer(
            max_steps=2,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            val_check_interval=2,
            limit_val_batches=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
        )
        trainer.fit(system, datamodule=dm)
        fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        trainer.test(system, datamodule=dm)
        files = sorted(str(p.relative_to(save_dir)) for p in Path(save_dir).rglob("*") if p.is_file())
        state["system_cfg"] = cfg
        return {
            "is_subclass": isinstance(system, ts_df.DreamFusion),
            "global_step": int(trainer.global_step),
            "fit_metrics": fit_metrics,
            "test_metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
            "means_moved": float((system.geometry.means.detach() - means0).abs().max()),
            "files": files,
        }

    def fit_briefly(system, max_steps: int, **trainer_kwargs):
        """Train ``system`` for ``max_steps`` on 32² random cameras (CPU, no logger, checkpoints or validation)."""
        import pytorch_lightning as pl

        dm = threestudio.find("random-camera-datamodule")({"width": 32, "height": 32, "batch_size": 2})
        trainer = pl.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            **trainer_kwargs,
        )
        trainer.fit(system, datamodule=dm)
        return trainer

    @check("guard_fit")
    def _check_guard():
        """The training guard on threestudio's DreamFusion: a NaN reward skips every update."""
        cfg = state["system_cfg"].copy()
        cfg.guidance.reward = {"type": "python", "target": "ddpo3d.testing.rewards:nan_reward"}
        cfg.max_consecutive_skips = 0
        system = threestudio.find("ddpo3d-system")(cfg, resumed=False)
        system.set_save_dir(os.path.join(work, "trial-guard", "save"))
        before = {k: v.detach().clone() for k, v in system.state_dict().items()}
        trainer = fit_briefly(system, max_steps=2)
        after = system.state_dict()
        return {
            "global_step": int(trainer.global_step),
            "skipped_steps": system.training_guard.skipped_steps,
            "unchanged": all(torch.equal(v, after[k]) for k, v in before.items() if k in after),
        }

    @check("magic3d_fit")
    def _check_magic3d():
        """threestudio's own ``magic3d-system`` (coarse stage) with the DDPO3D guidance, unchanged."""
        cfg = state["system_cfg"].copy()
        cfg.refinement = False
        system = threestudio.find("magic3d-system")(cfg, resumed=False)
        system.set_save_dir(os.path.join(work, "trial-magic3d", "save"))
        trainer = fit_briefly(system, max_steps=1, log_every_n_steps=1)
        return {
            "global_step": int(trainer.global_step),
            "fit_metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        }

    @check("render_out_fit")
    def _check_render_out():
        """``ddpo3d-system`` on threestudio's DreamFusion hands a guidance that asks for them
        (``needs_render_out``) the render outputs as ``render_out=`` in training, through
        threestudio's own training step; threestudio's ``dreamfusion-system`` keeps its call."""
        from threestudio.utils.base import BaseObject

        seen = []

        @threestudio.register("ddpo3d-test-render-out-guidance")
        class RecordingGuidance(BaseObject):
            needs_render_out = True

            def __call__(self, rgb, prompt_utils, elevation, azimuth, camera_distances, render_out=None, **batch):
                seen.append({"render_out": None if render_out is None else sorted(render_out), "batch": sorted(batch)})
                loss = ((rgb - 0.5) ** 2).mean()
                if render_out is not None:  # a geometry term: its gradient reaches the splats through opacity
                    loss = loss + render_out["opacity"].mean()
                return {"loss_sds": loss}

        runs = {}
        for system_type in ("ddpo3d-system", "dreamfusion-system"):
            cfg = state["system_cfg"].copy()
            cfg.guidance_type = "ddpo3d-test-render-out-guidance"
            cfg.guidance = {}
            system = threestudio.find(system_type)(cfg, resumed=False)
            system.set_save_dir(os.path.join(work, f"trial-render-out-{system_type}", "save"))
            seen.clear()
            trainer = fit_briefly(system, max_steps=1)
            runs[system_type] = {"calls": list(seen), "global_step": int(trainer.global_step)}
        return runs

    # ---- every shipped config, through threestudio's own config machinery -------------------
    from ddpo3d.testing.tiny_clip import TINY_CLIP_NAME, register_tiny_clip, write_aesthetic_head

    register_tiny_clip()
    head = write_aesthetic_head(os.path.join(work, "head.pth"))

    for config_path in SHIPPED_CONFIGS:
        check(f"config:{config_path.stem}")(
            lambda path=config_path: _check_shipped_config(
                path, work, tiny, tiny_if_pipeline, head, TINY_CLIP_NAME, src
            )
        )

    report["total_seconds"] = time.time() - t0
    save()


class _Unavailable(Exception):
    """A check that cannot run in this environment (reported as skipped, with the reason)."""


SHIPPED_CONFIGS = sorted((EXT_DIR / "configs").glob("*.yaml"))
#: threestudio classes whose construction needs CUDA: tinycudann / nerfacc, or (the environment
#: map's encoding) a ``torch.cuda.device`` context
CUDA_ONLY = {"implicit-volume", "nerf-volume-renderer", "neural-environment-map-background"}


def shipped_config_overrides(path: Path, out: str, pipe: str, head: str, clip_name: str) -> list:
    """A shipped config made tiny: local tiny SD / IF and CLIP, 32 px, 2 steps, few points / samples."""
    text = path.read_text()
    overrides = [
        f"exp_root_dir={out}",
        "use_timestamp=false",
        "tag=compat",
        "system.prompt_processor.prompt=a red apple",
        "system.prompt_processor.spawn=false",
        f"system.prompt_processor.pretrained_model_name_or_path={pipe}",
        f"system.guidance.pretrained_model_name_or_path={pipe}",
        "system.guidance.half_precision_weights=false",
        f"system.guidance.reward.clip_model={clip_name}",
        "system.guidance.reward.clip_pretrained=null",
        "system.guidance.reward.allow_random_init=true",
        f"system.guidance.reward.head_path={head}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.precision=32",
        "data.batch_size=1",
        "data.width=32",
        "data.height=32",
        "data.eval_width=32",
        "data.eval_height=32",
        "data.n_val_views=1",
        "data.n_test_views=2",
    ]
    if "ddpo3d-gaussian-splat" in text:
        overrides += ["system.geometry.num_points=200", "system.renderer.backend=torch"]
    if re.search(r"^\s+type: ddpo3d\s*(#.*)?$", text, re.M):  # the policy's K actions (only ddpo3d has them)
        overrides.append("system.guidance.objective.num_samples=2")
    if "type: reward-sds" in text:  # RewardSDS: 4 noise candidates instead of 7 (min-max needs n_max + n_min = 4)
        overrides.append("system.guidance.objective.num_candidates=4")
    if "reward_decoder: madebyollin/taesd" in text:  # TAESD is not on test machines: its tiny twin
        from ddpo3d.testing.tiny_taesd import write_tiny_taesd

        twin = write_tiny_taesd(os.path.join(out, "tiny-taesd"))
        overrides.append(f"system.guidance.objective.reward_decoder={twin}")
    return overrides


def _check_shipped_config(path: Path, work: str, tiny_sd: str, tiny_if, head: str, clip_name: str, src) -> dict:
    """Load one shipped config with threestudio's ``load_config``, parse every block with the
    Config class threestudio registers for it, then train it (Gaussian configs: with threestudio's
    own ``launch.py`` and this project's, on CPU) or, where a part needs CUDA extensions, build
    every other part and run one guidance step with the system's loss weighting."""
    import pytorch_lightning as pl
    import threestudio
    import torch
    from threestudio.utils.config import load_config, parse_structured
    from threestudio.utils.misc import C

    text = path.read_text()
    pipe = tiny_if() if "deep-floyd" in text else tiny_sd
    out = os.path.join(work, "configs", path.stem)
    overrides = shipped_config_overrides(path, out, pipe, head, clip_name)
    cfg = load_config(str(path), cli_args=overrides, n_gpus=1)
    # threestudio's system parses its block the same way (strict, with its defaults filled in)
    sys_cfg = parse_structured(threestudio.find(cfg.system_type).Config, cfg.system)
    parsed = {"system": cfg.system_type}
    for part in ("geometry", "material", "background", "renderer", "prompt_processor", "guidance", "exporter"):
        name = sys_cfg[f"{part}_type"]
        parse_structured(threestudio.find(name).Config, sys_cfg[part])
        parsed[part] = name
    needs_cuda = sorted(CUDA_ONLY & set(parsed.values()))
    data = {"parsed_with_threestudio_configs": parsed, "needs_cuda_extensions": needs_cuda}
    missing = [k for k in ("lambda_orient", "lambda_sparsity", "lambda_opaque") if k not in sys_cfg.loss]
    assert not missing, f"system.loss lacks {missing}, which threestudio's systems read every step"

    if not needs_cuda:
        real_trainer = pl.Trainer

        def cpu_trainer(*args, **kwargs):  # both launchers ask for accelerator="gpu"
            kwargs.update(accelerator="cpu", devices=1)
            return real_trainer(*args, **kwargs)

        import pytorch_lightning.loggers as pl_loggers

        real_tb = pl_loggers.TensorBoardLogger

        class CSVInsteadOfTensorBoard(pl_loggers.CSVLogger):
            """tensorboard is a threestudio requirement that is not installed here."""

        runs = {}
        pl.Trainer = cpu_trainer
        if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
            pl_loggers.TensorBoardLogger = CSVInsteadOfTensorBoard
        try:
            if src and os.path.isfile(os.path.join(src, "launch.py")):
                spec = importlib.util.spec_from_file_location("threestudio_launch_main", os.path.join(src, "launch.py"))
                ts_launch = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(ts_launch)
                ts_launch.load_custom_modules = lambda: None  # the extension is loaded once, by the "load" check
                ts_args = ts_launch_args(str(path))
                ts_launch.main(ts_args, [f"exp_root_dir={out}/threestudio-launch", *overrides[1:]])
                runs["threestudio_launch"] = _trial_files(os.path.join(out, "threestudio-launch"))
            sys.path.insert(0, str(REPO))
            import launch as our_launch

            rc = our_launch.main(
                ["--config", str(path), "--train", f"exp_root_dir={out}/ddpo3d-launch", *overrides[1:]], custom_dirs=[]
            )
            assert rc == 0, f"this project's launch.py returned {rc}"
            runs["ddpo3d_launch"] = _trial_files(os.path.join(out, "ddpo3d-launch"))
        finally:
            pl.Trainer = real_trainer
            pl_loggers.TensorBoardLogger = real_tb
        data["trained"] = runs
        return data

    # NeRF configs: geometry / renderer need tinycudann / nerfacc; everything else is built
    built = {}
    dm = threestudio.find(cfg.data_type)(cfg.data)
    dm.setup("fit")
    batch = dm.train_dataset.collate(None)
    built["data"] = cfg.data_type
    for part in ("material", "background"):
        if parsed[part] not in CUDA_ONLY:
            threestudio.find(parsed[part])(sys_cfg[part])
            built[part] = parsed[part]
    if parsed["prompt_processor"] == "deep-floyd-prompt-processor":
        # as in the deep_floyd check: T5 without 8-bit / device_map (CUDA, accelerate), float32
        import threestudio.models.prompt_processors.deepfloyd_prompt_processor as dfpp

        real_t5 = dfpp.T5EncoderModel

        class _T5Float32:
            @staticmethod
            def from_pretrained(*args, **kwargs):
                for key in ("load_in_8bit", "variant", "device_map"):
                    kwargs.pop(key, None)
                return real_t5.from_pretrained(*args, **{**kwargs, "torch_dtype": torch.float32})

        dfpp.T5EncoderModel = _T5Float32
        try:
            pu = threestudio.find(parsed["prompt_processor"])(sys_cfg.prompt_processor)()
        finally:
            dfpp.T5EncoderModel = real_t5
    else:
        pu = threestudio.find(parsed["prompt_processor"])(sys_cfg.prompt_processor)()
    guidance = threestudio.find(parsed["guidance"])(sys_cfg.guidance)
    guidance.update_step(0, 0)
    built["prompt_processor"], built["guidance"] = parsed["prompt_processor"], parsed["guidance"]
    torch.manual_seed(0)
    rgb = torch.rand(batch["rays_o"].shape[0], batch["height"], batch["width"], 3, requires_grad=True)
    guidance_out = guidance(rgb, pu, **batch, rgb_as_latents=False)
    # threestudio's training_step weighting: loss_<x> * C(system.loss.lambda_<x>)
    loss = sum(
        v * C(sys_cfg.loss[k.replace("loss_", "lambda_")], 0, 0)
        for k, v in guidance_out.items()
        if k.startswith("loss_")
    )
    loss.backward()
    data.update(
        {
            "built": built,
            "not_built": needs_cuda,
            "losses": sorted(k for k in guidance_out if k.startswith("loss_")),
            "loss": float(loss),
            "grad_finite": bool(torch.isfinite(rgb.grad).all()),
            "grad_abs_sum": float(rgb.grad.abs().sum()),
        }
    )
    return data


def ts_launch_args(config: str):
    """threestudio's launch.py arguments for ``--config <config> --train --gpu 0``."""
    import argparse

    return argparse.Namespace(
        config=config,
        gpu="0",
        train=True,
        validate=False,
        test=False,
        export=False,
        gradio=False,
        verbose=False,
        typecheck=False,
    )


def _trial_files(root: str) -> list:
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file() and "code" not in p.parts)


# ----------------------------------------------------------------------------- pytest side
def _threestudio_source():
    """(PYTHONPATH entries, threestudio checkout or None, skip reason or None)."""
    src = os.environ.get("DDPO3D_THREESTUDIO_SRC")
    if src:
        if not os.path.isfile(os.path.join(src, "threestudio", "__init__.py")):
            return None, None, f"DDPO3D_THREESTUDIO_SRC={src} has no threestudio/__init__.py"
        return [os.path.abspath(src)], os.path.abspath(src), None
    if importlib.util.find_spec("threestudio") is None:
        return (
            None,
            None,
            (
                "threestudio is not importable; set DDPO3D_THREESTUDIO_SRC=<threestudio checkout> and "
                "DDPO3D_THREESTUDIO_STUBS=1 to check against its source on CPU"
            ),
        )
    spec = importlib.util.find_spec("threestudio")
    root = Path(spec.origin).resolve().parents[1]
    return [], str(root) if (root / "launch.py").is_file() else None, None


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    paths, src, reason = _threestudio_source()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("threestudio_compat")
    if os.environ.get("DDPO3D_THREESTUDIO_STUBS", "0").lower() in ("1", "true", "yes"):
        paths = [str(write_placeholders(tmp / "placeholders"))] + paths
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["DDPO3D_HOST"] = "threestudio"
    env.setdefault("OMP_NUM_THREADS", "1")
    out = tmp / "report.json"
    cmd = [sys.executable, "-W", "ignore", __file__, "--out", str(out), "--work", str(tmp / "work")]
    if src:
        cmd += ["--src", src]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if not out.is_file():
        pytest.fail(f"the threestudio check process wrote no report (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(out.read_text())
    keep = os.environ.get("DDPO3D_COMPAT_REPORT")
    if keep:  # keep the JSON report (pytest's tmp dirs are rotated)
        Path(keep).write_text(out.read_text())
    if not data["import"]["ok"]:
        pytest.skip(
            f"threestudio is installed but does not import here ({data['import']['error']}); "
            "set DDPO3D_THREESTUDIO_SRC and DDPO3D_THREESTUDIO_STUBS=1 to use CPU placeholders"
        )
    return data


def _entry(report, name):
    entry = report.get(name)
    assert entry is not None, f"check {name!r} did not run (an earlier check failed): {sorted(report)}"
    assert entry["ok"], f"check {name!r} raised:\n{entry['error']}"
    return entry


def test_extension_registers_on_threestudio(report):
    e = _entry(report, "load")
    assert e["loaded"], "threestudio's load_custom_module reported IMPORT FAILED"
    assert e["host"] == "threestudio" and e["host_base_is_threestudio"]
    assert e["host_device"] == "cpu"
    expected = {
        "ddpo3d-stable-diffusion-guidance",
        "ddpo3d-system",
        "ddpo3d-gaussian-splat",
        "ddpo3d-gaussian-splat-renderer",
        "ddpo3d-toy-guidance",
        "ddpo3d-toy-prompt-processor",
    }
    assert expected <= set(e["added"]), e["added"]
    assert all(n.startswith("ddpo3d-") for n in e["added"]), e["added"]
    for attr, qual in e["lazy"].items():
        assert qual.startswith("threestudio."), (attr, qual)
    assert (
        "threestudio.models.guidance.stable_diffusion_guidance.StableDiffusionGuidance"
        in e["bases"]["ddpo3d-stable-diffusion-guidance"]
    )
    assert "threestudio.systems.dreamfusion.DreamFusion" in e["bases"]["ddpo3d-system"]
    for name in ("ddpo3d-gaussian-splat", "ddpo3d-gaussian-splat-renderer"):
        assert "threestudio.utils.base.BaseModule" in e["bases"][name], (name, e["bases"][name])


def test_guidance_ddpo3d_on_threestudio_base(report):
    e = _entry(report, "guidance_ddpo3d")
    assert e["is_subclass"] and e["prompt_utils_is_threestudio"], e["prompt_utils_type"]
    assert e["missing_base_keys"] == [], e["missing_base_keys"]
    assert e["device"] == "cpu"
    assert {"loss_sds", "loss_ddpo", "grad_norm", "reward_mean"} <= set(e["keys"]), e["keys"]
    assert math.isfinite(e["loss_sds"]) and math.isfinite(e["loss_ddpo"])
    for key in ("grad_sds", "grad_ddpo"):
        assert e[key]["finite"] and e[key]["abs_sum"] > 0, (key, e[key])
    # threestudio's direction rule (azimuth 0 -> front, 90 -> side)
    assert e["reward_prompts"] == ["a red apple, front view", "a red apple, side view"]


def test_guidance_reward_backprop_on_threestudio_base(report):
    e = _entry(report, "guidance_reward_backprop")
    assert "loss_reward" in e["keys"] and math.isfinite(e["loss_reward"])
    assert e["grad_reward"]["finite"] and e["grad_reward"]["abs_sum"] > 0


def test_loss_sds_matches_threestudio_stable_diffusion_guidance(report):
    e = _entry(report, "sds_equal")
    assert e["unet_calls"] == [1, 1]
    assert e["t_equal"] and e["emb_equal"] and e["x_t_max_abs_diff"] == 0.0, e
    assert e["loss_sds_ours"] == pytest.approx(e["loss_sds_threestudio"], rel=1e-5, abs=1e-6)
    assert e["grad_max_abs"] > 0
    assert e["grad_max_abs_diff"] <= 1e-5 * e["grad_max_abs"], e


def test_deep_floyd_guidance_on_threestudio_base(report):
    entry = report.get("deep_floyd") or {}
    if not entry.get("ok", True) and "_Unavailable" in entry.get("error", ""):
        pytest.skip(entry["error"].strip().splitlines()[-1])
    e = _entry(report, "deep_floyd")
    assert e["is_subclass"]
    assert {"loss_sds", "loss_ddpo"} <= set(e["keys"]), e["keys"]
    assert math.isfinite(e["loss_sds"]) and math.isfinite(e["loss_ddpo"])
    for key in ("grad_sds", "grad_ddpo"):
        assert e[key]["finite"] and e[key]["abs_sum"] > 0, (key, e[key])
    # stock deep-floyd-guidance vs ours with the alignment off (threestudio scales to [-1, 1]
    # before resizing, we after: the same up to float rounding)
    assert e["loss_sds_ours"] == pytest.approx(e["loss_sds_threestudio"], rel=1e-5)
    assert e["grad_max_abs"] > 0 and e["grad_max_abs_diff"] <= 1e-5 * e["grad_max_abs"], e


def test_ddpo3d_system_trains_under_threestudio(report):
    e = _entry(report, "system_fit")
    assert e["is_subclass"]
    assert e["global_step"] == 2
    m = e["fit_metrics"]
    for key in ("train/loss_sds", "train/loss_ddpo", "train/reward_mean", "val/reward"):
        assert key in m and math.isfinite(m[key]), (key, sorted(m))
    assert math.isfinite(e["test_metrics"].get("test/reward", float("nan")))
    assert e["means_moved"] > 0, "no gradient reached the Gaussian splat geometry"
    for f in ("metrics.csv", "curves.png", "it2-0.png", "it2-test.mp4", "it2-test/0.png", "it2-test-rgb/0.png"):
        assert f in e["files"], (f, e["files"])


def test_nonfinite_reward_skips_updates_under_threestudio(report):
    e = _entry(report, "guard_fit")
    assert e["global_step"] == 2 and e["skipped_steps"] == 2 and e["unchanged"], e


def test_magic3d_coarse_system_uses_the_guidance_unchanged(report):
    e = _entry(report, "magic3d_fit")
    assert e["global_step"] == 1
    for key in ("train/loss_sds", "train/loss_ddpo", "train/reward_mean"):
        assert key in e["fit_metrics"] and math.isfinite(e["fit_metrics"][key]), (key, sorted(e["fit_metrics"]))


def test_ddpo3d_system_passes_render_out_under_threestudio(report):
    e = _entry(report, "render_out_fit")
    ours, theirs = e["ddpo3d-system"], e["dreamfusion-system"]
    assert ours["global_step"] == 1 and len(ours["calls"]) == 1, ours
    call = ours["calls"][0]
    assert call["render_out"] is not None and {"comp_rgb", "opacity"} <= set(call["render_out"]), call
    assert "render_out" not in call["batch"] and {"rays_o", "rays_d"} <= set(call["batch"]), call
    assert theirs["global_step"] == 1 and theirs["calls"][0]["render_out"] is None, theirs


@pytest.mark.parametrize("config", [p.stem for p in SHIPPED_CONFIGS])
def test_every_shipped_config_loads_and_runs_in_threestudio(report, config):
    """Each shipped config loads with threestudio's load_config, every block parses with the Config
    threestudio registers for it; Gaussian configs train 2 steps with threestudio's own launch.py
    and with ours; NeRF configs (tinycudann / nerfacc) build data, material, background, prompt
    processor and guidance and take one weighted guidance step."""
    entry = report.get(f"config:{config}")
    assert entry is not None, f"check for {config} did not run: {sorted(report)}"
    if config.startswith("dreamreward") and not entry["ok"] and "mvdream-system" in entry["error"]:
        # the DreamReward configs build on threestudio-mvdream (not loaded in this harness); their
        # guidance subclass is checked against threestudio-mvdream's own source in tests/test_mvdream.py
        pytest.skip("needs the threestudio-mvdream extension; see tests/test_mvdream.py")
    if not entry["ok"] and "_Unavailable" in entry["error"]:
        pytest.skip(entry["error"].strip().splitlines()[-1])
    assert entry["ok"], f"{config} raised:\n{entry['error']}"
    assert entry["parsed_with_threestudio_configs"]["guidance"].startswith("ddpo3d-")
    if entry["needs_cuda_extensions"]:
        assert entry["grad_finite"] and entry["grad_abs_sum"] > 0, entry
        assert "loss_sds" in entry["losses"], entry["losses"]
        terms = {"reward-tilted": "loss_tilt", "reward-sds": "loss_rsds", "dreamdpo": "loss_dpo"}
        for key, term in terms.items():  # the SDS-family objectives' own terms
            if key in config:
                assert term in entry["losses"], (config, entry["losses"])
        return
    for launcher, files in entry["trained"].items():
        for f in ("ckpts/last.ckpt", "save/it2-test.mp4", "save/metrics.csv", "configs/parsed.yaml"):
            assert any(x.endswith(f) for x in files), (launcher, f, files)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="threestudio compatibility checks (run by the tests)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--src", default=None)
    args = parser.parse_args()
    _run_checks(args.out, args.work, args.src)
