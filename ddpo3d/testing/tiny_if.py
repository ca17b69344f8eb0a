"""A tiny, seeded DeepFloyd IF (stage I) pipeline assembled offline (no download).

Same component layout as ``DeepFloyd/IF-I-XL-v1.0`` (``unet``, ``text_encoder``,
``tokenizer``, ``scheduler``; no safety checker, feature extractor or watermarker), so code
that loads IF with ``IFPipeline.from_pretrained(path, local_files_only=True)`` runs on it:

* pixel-space UNet with IF's block types (``ResnetDownsampleBlock2D`` /
  ``SimpleCrossAttnDownBlock2D``, ``UNetMidBlock2DSimpleCrossAttn``, added-KV cross attention
  only at the lowest resolution), IF's ``addition_embed_type="text"`` (attention-pooled text
  embedding added to the time embedding) and ``encoder_hid_dim`` (a linear projection of the
  T5 states to ``cross_attention_dim``); 3 input channels, 6 output channels (ε and the
  learned-range variance interpolation, Nichol & Dhariwal 2021, arXiv 2102.09672, eq. 15),
  ``(4, 8)`` channels, 2 norm groups, ``sample_size`` 32 (the native image size: no VAE);
* T5 encoder of width 16, 2 layers, 2 heads;
* a T5 (Unigram) tokenizer trained here with the ``tokenizers`` library on a small built-in
  prompt corpus and wrapped as ``transformers.T5Tokenizer`` (``<pad>``=0, ``</s>``=1,
  ``<unk>``=2, as T5); no sentencepiece model and no hub access needed;
* ``DDPMScheduler`` with IF's configuration (``squaredcos_cap_v2`` betas, 1000 steps,
  ε-prediction, ``variance_type="learned_range"``) but ``thresholding=False``.

Tests use it wherever the real IF-I-XL (4.3 B parameters, T5-XXL) would be needed.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile

import torch

from ddpo3d.utils.typing import List

#: width of the tiny T5 encoder (IF-I-XL: 4096, T5-XXL)
TEXT_EMBED_DIM = 16
#: the UNet's cross-attention width (a multiple of 32: IF's cross-attention group norm uses 32 groups)
CROSS_ATTENTION_DIM = 32
#: the UNet's native image size (IF-I: 64)
SAMPLE_SIZE = 32
#: T5 prompt length used by IF (``IFPipeline.encode_prompt`` pads to 77 tokens)
MAX_LENGTH = 77
TOKENIZER_VOCAB_SIZE = 256

_CORPUS: List[str] = [
    "a hamburger",
    "a delicious hamburger",
    "a zoomed out DSLR photo of a baby bunny sitting on top of a stack of pancakes",
    "a DSLR photo of a squirrel playing guitar",
    "a highly detailed sand castle",
    "a wooden chair",
    "a ripe strawberry",
    "an ice cream sundae",
    "a plate piled high with chocolate chip cookies",
    "a blue and white porcelain vase",
    "a red sports car",
    "a small green cactus in a clay pot",
    "a cute corgi wearing a red hat",
    "a tiger dressed as a doctor",
    "a panda eating bamboo",
    "an astronaut riding a horse",
    "a lighthouse on a rocky cliff",
    "a steaming cup of coffee",
    "a pineapple",
    "a teddy bear",
    "front view",
    "side view",
    "back view",
    "overhead view",
    "backside view of",
    "front view of",
    "side view of",
    "overhead view of",
    "ugly, blurry, low quality, oversaturated, worst quality",
    "3d render, photorealistic, high resolution, 4k, 8k",
]


def build_t5_tokenizer(vocab_size: int = TOKENIZER_VOCAB_SIZE):
    """A T5 tokenizer whose Unigram vocabulary is trained offline on ``_CORPUS``.

    The pre-tokenizer (whitespace split + SentencePiece's ``▁`` metaspace) is the one
    ``transformers.T5Tokenizer`` installs, so the trained pieces are the pieces it looks up.
    Every ASCII letter, digit and punctuation mark is in the initial alphabet, so any ASCII
    prompt tokenizes without ``<unk>``.

    Args:
        vocab_size: target vocabulary size of the Unigram trainer (an upper bound: a small
            corpus yields fewer pieces).

    Returns:
        A ``transformers.T5Tokenizer`` (``model_max_length`` 77, no sentinel ``<extra_id_*>``).
    """
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],  # T5's ids 0, 1, 2
        unk_token="<unk>",
        initial_alphabet=list(string.ascii_letters + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    vocab = [(str(piece), float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    if [p for p, _ in vocab[:3]] != ["<pad>", "</s>", "<unk>"]:
        raise RuntimeError(f"unexpected special tokens at the start of the trained vocabulary: {vocab[:3]}")
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=MAX_LENGTH)


def build_tiny_if_components(seed: int = 0) -> dict:
    """The tiny IF components in memory: ``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``.

    Args:
        seed: torch seed for the random weights (the global RNG state is restored).

    Returns:
        Keyword arguments for ``diffusers.IFPipeline`` (optional components set to None).
    """
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel(
            sample_size=SAMPLE_SIZE,
            in_channels=3,
            out_channels=6,
            layers_per_block=1,
            block_out_channels=(4, 8),
            norm_num_groups=2,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            cross_attention_dim=CROSS_ATTENTION_DIM,
            encoder_hid_dim=TEXT_EMBED_DIM,
            encoder_hid_dim_type="text_proj",
            attention_head_dim=2,
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            act_fn="gelu",
        )
        text_encoder = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer),
                d_model=TEXT_EMBED_DIM,
                d_kv=8,
                d_ff=32,
                num_layers=2,
                num_heads=2,
                relative_attention_num_buckets=8,
                relative_attention_max_distance=32,
                feed_forward_proj="gated-gelu",  # T5 v1.1 (IF's T5-XXL)
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    finally:
        torch.random.set_rng_state(state)
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        prediction_type="epsilon",
        variance_type="learned_range",
        thresholding=False,
        clip_sample=True,
        clip_sample_range=1.0,
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def build_tiny_if_pipeline(path: str, seed: int = 0) -> str:
    """Assemble and save the tiny IF pipeline to ``path`` (reused if already there).

    The pipeline is written to a temporary sibling directory and renamed into place, so
    concurrent builders (pytest-xdist workers) never see a half-written folder.

    Args:
        path: output directory (``model_index.json`` marks a finished pipeline).
        seed: torch seed for the random weights.

    Returns:
        ``path``, loadable with ``IFPipeline.from_pretrained(path, local_files_only=True)``;
        ``text_encoder`` / ``tokenizer`` subfolders load with ``T5EncoderModel`` / ``T5Tokenizer``.
    """
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return path
    from diffusers import IFPipeline

    pipe = IFPipeline(**build_tiny_if_components(seed))
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-if-", dir=parent)
    try:
        pipe.save_pretrained(tmp)
        try:
            os.rename(tmp, path)
        except OSError:
            # another process finished first (or ``path`` is an existing, unfinished folder)
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                if os.path.isdir(path) and not os.listdir(path):
                    os.rmdir(path)
                    os.rename(tmp, path)
                    return path
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
