"""CLIP's BPE tokenizer files, written from open_clip's bundled merges (no hub needed).

transformers' ``CLIPTokenizer(vocab_file, merges_file, model_max_length=77)`` built from these
files gives the same ids as open_clip's tokenizer (padding aside): rewards whose checkpoints
ship no tokenizer (PickScore without its processor repo) fall back to it, and the tests' tiny
pipelines use it.
"""

from __future__ import annotations

import gzip
import json
import os

from ddpo3d.utils.typing import Dict, Tuple

__all__ = ["write_clip_tokenizer_files"]


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode table (Radford et al. 2019 / 2021 BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer_files(folder: str) -> Tuple[str, str]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` from open_clip's bundled BPE merges.

    The vocabulary is built the way OpenAI CLIP builds it: the 256 byte symbols, the same
    with ``</w>``, one token per merge (the first 49152 - 256 - 2 merges), then
    ``<|startoftext|>`` and ``<|endoftext|>`` (49408 tokens).

    Returns:
        ``(vocab_path, merges_path)``.
    """
    import open_clip

    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.isfile(bpe_path):
        raise FileNotFoundError(f"open_clip's BPE merges file is missing: {bpe_path}")
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab_path = os.path.join(folder, "vocab.json")
    merges_path = os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_path, merges_path
