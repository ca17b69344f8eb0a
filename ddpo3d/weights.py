"""Finding model weights on disk: local paths, the Hugging Face cache, the open_clip cache.

Every loader in ``ddpo3d`` goes through these helpers so that the rules are the same
everywhere:

* a local file path always wins;
* otherwise the Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) and the open_clip
  URL cache (``~/.cache/clip``) are searched *without* network access;
* nothing is ever downloaded unless the one opt-in, the environment variable
  ``DDPO3D_ALLOW_DOWNLOAD=1``, is set, and never when ``HF_HUB_OFFLINE`` is set
  (:func:`downloads_allowed`); rewards, the built-in runtime and the extension all ask here;
* when nothing is found, :class:`WeightsNotFoundError` says which model, every place that
  was searched, and how to provide the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from ddpo3d.utils.typing import List, Optional, Sequence, Tuple

__all__ = [
    "WeightsNotFoundError",
    "DOWNLOAD_ENV",
    "downloads_allowed",
    "hf_offline",
    "hf_cache_dir",
    "open_clip_cache_dir",
    "ddpo3d_cache_dir",
    "torch_hub_checkpoint_dir",
    "find_hf_file",
    "describe_hf_file",
    "split_hf_spec",
    "resolve_weights_file",
    "resolve_pretrained",
]

#: The single opt-in to downloads (``1`` / ``true`` / ``yes`` / ``on``).
DOWNLOAD_ENV = "DDPO3D_ALLOW_DOWNLOAD"

_TRUE = {"1", "true", "yes", "on"}


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are not on this machine.

    Args:
        model: human-readable model name (e.g. ``"LAION aesthetic head sac+logos+ava1-l14-linearMSE"``).
        looked_in: every place that was searched, in order (paths, cache entries).
        how_to_get: what the user can do: a download command, a config key to set.
    """

    def __init__(self, model: str, looked_in: Sequence[str], how_to_get: str):
        self.model = model
        self.looked_in = list(looked_in)
        self.how_to_get = how_to_get
        places = "\n".join(f"  - {p}" for p in self.looked_in) or "  (nowhere: no location configured)"
        offline = " (HF_HUB_OFFLINE is set)" if hf_offline() else ""
        super().__init__(
            f"Weights for {model} were not found{offline}. Looked in:\n{places}\nHow to provide them: {how_to_get}"
        )

    def __reduce__(self):  # keep picklable (pytest-xdist, multiprocessing)
        return (type(self), (self.model, self.looked_in, self.how_to_get))


def hf_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for no network access to the Hugging Face hub."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def downloads_allowed() -> bool:
    """Whether loaders may fetch missing weights: ``$DDPO3D_ALLOW_DOWNLOAD`` is truthy and
    ``HF_HUB_OFFLINE`` is not set. Off by default: weights come from disk only."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in _TRUE and not hf_offline()


def hf_cache_dir() -> str:
    """The Hugging Face hub cache directory (honours ``HF_HUB_CACHE`` and ``HF_HOME``)."""
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return env
    home = os.environ.get("HF_HOME")
    if home:
        return os.path.join(home, "hub")
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of open_clip
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def open_clip_cache_dir() -> str:
    """Where open_clip stores weights downloaded from plain URLs (its default ``~/.cache/clip``)."""
    return os.path.join(os.path.expanduser("~"), ".cache", "clip")


def ddpo3d_cache_dir() -> str:
    """Our own weights folder: ``$DDPO3D_CACHE`` or ``~/.cache/ddpo3d``."""
    return os.environ.get("DDPO3D_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ddpo3d")


def torch_hub_checkpoint_dir() -> str:
    """Where ``torch.hub.load_state_dict_from_url`` stores files (``$TORCH_HOME/hub/checkpoints``)."""
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def split_hf_spec(spec: str) -> Optional[tuple]:
    """Split ``"org/repo/path/in/repo.ext"`` into ``("org/repo", "path/in/repo.ext")``.

    Returns ``None`` when ``spec`` cannot be a hub reference (fewer than three parts,
    absolute path, or a part that is empty / ``.`` / ``..``).
    """
    if os.path.isabs(spec) or spec.startswith(("~", ".")):
        return None
    parts = spec.split("/")
    if len(parts) < 3 or any(p in ("", ".", "..") for p in parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def describe_hf_file(repo_id: str, filename: str, cache_dir: Optional[str] = None) -> str:
    """Human-readable cache location of a hub file, for error messages."""
    root = cache_dir or hf_cache_dir()
    folder = "models--" + repo_id.replace("/", "--")
    return f"Hugging Face cache: {os.path.join(root, folder)} (repo {repo_id}, file {filename})"


def find_hf_file(
    repo_id: str,
    filename: str,
    cache_dir: Optional[str] = None,
    revision: Optional[str] = None,
) -> Optional[str]:
    """Path of ``filename`` from hub repo ``repo_id`` in the local cache, or ``None``.

    Args:
        repo_id: e.g. ``"timm/vit_large_patch14_clip_224.openai"``.
        filename: file inside the repo.
        cache_dir: hub cache to search (default: :func:`hf_cache_dir`).
        revision: branch / tag / commit (default ``main``).

    Returns:
        The local path, or ``None`` when the file is not cached and :func:`downloads_allowed`
        is false (otherwise the file is downloaded into the cache).
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    cache_dir = cache_dir or hf_cache_dir()
    try:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
    except Exception:  # malformed repo id and the like: simply "not cached"
        hit = None
    if isinstance(hit, str) and os.path.isfile(hit):
        return hit
    if downloads_allowed():
        from huggingface_hub import hf_hub_download

        return hf_hub_download(repo_id, filename, cache_dir=cache_dir, revision=revision)
    return None


def resolve_weights_file(
    model: str,
    spec: Optional[str],
    default_locations: Sequence[str] = (),
    default_hf: Sequence[tuple] = (),
    how_to_get: str = "",
    cache_dir: Optional[str] = None,
) -> str:
    """Find one weights file, or raise :class:`WeightsNotFoundError`.

    ``spec`` (from a config) is tried first: an existing local file (``~`` expanded), else,
    when it has the form ``org/repo/path/in/repo``, that file in the Hugging Face cache.
    When ``spec`` is ``None`` the ``default_locations`` (local paths) and ``default_hf``
    (``(repo_id, filename)`` pairs) are tried in order.

    Args:
        model: model name for the error message.
        spec: local path or hub reference from the user's config, or ``None``.
        default_locations: local files tried when ``spec`` is ``None``.
        default_hf: hub files tried (cache only) when ``spec`` is ``None``.
        how_to_get: instructions appended to the error.
        cache_dir: Hugging Face cache to search.

    Returns:
        Path of an existing file.
    """
    looked: List[str] = []
    candidates_local: List[str] = []
    candidates_hf: List[tuple] = []
    if spec is not None:
        spec = str(spec)
        candidates_local.append(os.path.expanduser(spec))
        hub = split_hf_spec(spec)
        if hub is not None and not os.path.exists(os.path.expanduser(spec)):
            candidates_hf.append(hub)
    else:
        candidates_local.extend(os.path.expanduser(p) for p in default_locations)
        candidates_hf.extend(default_hf)
    for path in candidates_local:
        p = Path(path)
        if p.is_file():
            return str(p)
        looked.append(f"local file: {p}" + (" (exists but is not a file)" if p.exists() else ""))
    for repo_id, filename in candidates_hf:
        hit = find_hf_file(repo_id, filename, cache_dir=cache_dir)
        if hit is not None:
            return hit
        looked.append(describe_hf_file(repo_id, filename, cache_dir))
    raise WeightsNotFoundError(model, looked, how_to_get)


def resolve_pretrained(name_or_path: str, what: str, required_file: str = "model_index.json") -> Tuple[str, bool]:
    """Where to load a diffusers / transformers model folder from, without touching the network.

    Args:
        name_or_path: a local directory or a hub repo id (``stabilityai/stable-diffusion-2-1-base``).
        what: human-readable model name for the error.
        required_file: file that marks a usable local directory / cache snapshot.

    Returns:
        ``(path_or_repo_id, local_files_only)`` to pass to ``from_pretrained``: a local folder
        or cache snapshot with ``True``, or the repo id with ``False`` when it is not on disk
        and :func:`downloads_allowed`.

    Raises:
        WeightsNotFoundError: naming the model, the places searched and how to provide the weights.
    """
    local = os.path.expanduser(str(name_or_path))
    looked = []
    if os.path.isdir(local):
        if os.path.isfile(os.path.join(local, required_file)):
            return local, True
        looked.append(f"local directory: {os.path.abspath(local)} (exists but has no {required_file})")
    else:
        looked.append(f"local directory: {os.path.abspath(local)}")
    parts = str(name_or_path).split("/")
    if len(parts) == 2 and all(parts) and not local.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            snap = snapshot_download(str(name_or_path), local_files_only=True, cache_dir=hf_cache_dir())
            if os.path.isfile(os.path.join(snap, required_file)):
                return snap, True
        except Exception:
            pass
        looked.append(
            f"Hugging Face cache: {os.path.join(hf_cache_dir(), 'models--' + str(name_or_path).replace('/', '--'))}"
        )
        if downloads_allowed():
            return str(name_or_path), False
    raise WeightsNotFoundError(
        what,
        looked,
        "point pretrained_model_name_or_path at a local diffusers folder, or fetch the repo once on a "
        f"machine with internet (`huggingface-cli download {name_or_path}`) into the HF cache; set "
        f"{DOWNLOAD_ENV}=1 to let ddpo3d download it",
    )
