"""A tiny, seeded Stable Diffusion pipeline assembled offline (no download).

Same component layout as ``stabilityai/stable-diffusion-2-1-base`` (``unet``, ``vae``,
``text_encoder``, ``tokenizer``, ``scheduler``), so code that loads SD with
``StableDiffusionPipeline.from_pretrained(path, local_files_only=True)`` runs on it:

* UNet ``(4, 8)`` channels, one layer per block, 2 norm groups, cross-attention only at the
  lowest resolution, ``sample_size`` 32 (native image size ``32 * 2 = 64`` px);
* VAE ``[4, 8]`` channels, 4 latent channels (downsampling factor 2);
* CLIP text encoder of width 16, 2 layers, 2 heads, vocabulary 49408, 77 positions;
* CLIP BPE tokenizer built from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``
  (the same merges as OpenAI CLIP, so token ids match the real tokenizer);
* DDIM scheduler with SD's ``scaled_linear`` betas.
"""

from __future__ import annotations

import os

import torch

from ddpo3d.rewards.clip_bpe import write_clip_tokenizer_files  # noqa: F401 (re-exported for tests)

CROSS_ATTENTION_DIM = 16
SAMPLE_SIZE = 32
NATIVE_RESOLUTION = 64


def build_tiny_sd_pipeline(path: str, seed: int = 0) -> str:
    """Assemble and save the tiny pipeline to ``path`` (reused if already there).

    Args:
        path: output directory (``model_index.json`` marks a finished pipeline).
        seed: torch seed for the random weights.

    Returns:
        ``path``, loadable with ``StableDiffusionPipeline.from_pretrained(path, local_files_only=True)``.
    """
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return path
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            block_out_channels=(4, 8),
            layers_per_block=1,
            norm_num_groups=2,
            sample_size=SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=CROSS_ATTENTION_DIM,
            attention_head_dim=2,
        )
        vae = AutoencoderKL(
            block_out_channels=[4, 8],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=2,
            sample_size=NATIVE_RESOLUTION,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=49407,
                hidden_size=CROSS_ATTENTION_DIM,
                intermediate_size=32,
                num_attention_heads=2,
                num_hidden_layers=2,
                vocab_size=49408,
                max_position_embeddings=77,
                projection_dim=CROSS_ATTENTION_DIM,
            )
        )
    finally:
        torch.random.set_rng_state(state)
    tok_dir = os.path.join(path, "_tokenizer_src")
    vocab_path, merges_path = write_clip_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer(vocab_path, merges_path, model_max_length=77)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    import shutil

    shutil.rmtree(tok_dir, ignore_errors=True)
    return path
