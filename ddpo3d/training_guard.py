"""Reliability of a training run, on either host (threestudio or ``ddpo3d.lite``).

* **Non-finite values never reach the parameters.** A non-finite reward, advantage, loss or
  gradient skips that step's parameter update: parameters and optimiser state stay as they
  were (every gradient is dropped, so ``optimizer.step`` leaves every parameter and its
  moments alone). Skips are counted (``train/skipped_steps``, ``train/skipped_<term>``) and
  after ``max_consecutive_skips`` skips in a row the run stops with one message naming the
  reward. Checkpoints holding a non-finite tensor are refused.
* **Nothing is lost on an exception.** Any exception during fitting writes
  ``ckpts/last.ckpt`` first (state as of the start of the failed step) and names the
  component that raised (which reward block, which guidance, ...) and the exception type.
* **Exact resume.** Ctrl-C finishes the current step, writes ``ckpts/last.ckpt`` and raises
  :class:`TrainingInterrupted` (the launcher exits 130; a second Ctrl-C stops at once). The
  global RNG streams (torch, CUDA, ``random``, numpy) are checkpointed per training batch:
  Lightning draws a batch one step ahead (prefetch), so the RNG state *before each batch
  draw* is recorded and replayed on resume; validation during fitting runs on an isolated
  RNG so that it does not shift the training stream. Systems add their own state (guidance
  generators, stat trackers, ...) through :func:`collect_extra_state`.

Use: a LightningModule returns :class:`TrainingGuard` from ``configure_callbacks`` and runs
its ``training_step`` through :func:`guarded_training_step`.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import threading
from typing import Iterator

import torch
from pytorch_lightning.callbacks import Callback

from ddpo3d.utils.finite import (
    NonFiniteError,
    TrainingInterrupted,
    check_finite_scores,
    describe_reward,
    finite_rewards_required,
)
from ddpo3d.utils.typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "NonFiniteError",
    "TrainingInterrupted",
    "TrainingGuard",
    "check_finite_scores",
    "collect_extra_state",
    "component_of",
    "finite_rewards_required",
    "guarded_training_step",
    "nonfinite_tensors",
    "restore_extra_state",
    "ReliableSystemMixin",
    "format_training_error",
]

#: consecutive skipped steps before a run stops (``system.max_consecutive_skips``)
DEFAULT_MAX_CONSECUTIVE_SKIPS = 5


# ----------------------------------------------------------------------------- components
def _component_labels(system: Any) -> Dict[int, str]:
    """``id(object) -> label`` of the parts of a text-to-3D system that can raise."""
    labels: Dict[int, str] = {}
    cfg = getattr(system, "cfg", None)
    for attr in ("guidance", "prompt_processor", "renderer", "geometry", "material", "background"):
        obj = getattr(system, attr, None)
        if obj is None:
            continue
        kind = cfg.get(f"{attr}_type", None) if hasattr(cfg, "get") else None
        labels[id(obj)] = f"{attr.replace('_', ' ')} {kind!r}" if kind else attr.replace("_", " ")
    guidance = getattr(system, "guidance", None)
    reward = getattr(guidance, "reward", None)
    if reward is not None:
        labels[id(reward)] = f"reward {describe_reward(reward)}"
        for i, term in enumerate(getattr(reward, "rewards", None) or []):
            labels[id(term)] = f"reward block #{i + 1} {describe_reward(term)}"
    return labels


def component_of(exc: BaseException, system: Any) -> Optional[str]:
    """The innermost system component on ``exc``'s traceback (``"reward block #2 'python'
    (mod:fn)"``, ``"guidance 'ddpo3d-toy-guidance'"``, ...), or ``None``."""
    labels = _component_labels(system)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if owner is not None and id(owner) in labels:
            found = labels[id(owner)]
        tb = tb.tb_next
    return found


# ---------------------------------------------------------------------------- RNG streams
def rng_state() -> Dict[str, Any]:
    """Global RNG states: torch CPU, CUDA (when initialised), ``random``, numpy."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        # tensors and plain numbers only: Lightning loads checkpoints with weights_only=True
        state["numpy"] = (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class _RecordingCollate:
    """Wraps a training loader's ``collate_fn``: records the RNG state before each batch draw
    (batch ``i`` is the one training step ``i`` consumes) and replays recorded states on resume."""

    def __init__(self, inner: Callable, start: int, replay: Dict[int, Dict[str, Any]]) -> None:
        self.inner = inner
        self.index = start
        self.replay = dict(replay)
        self.recorded: Dict[int, Dict[str, Any]] = {}

    def __call__(self, batch: Any) -> Any:
        if self.index in self.replay:
            set_rng_state(self.replay.pop(self.index))
        self.recorded[self.index] = rng_state()
        for old in [i for i in self.recorded if i < self.index - 3]:
            del self.recorded[old]
        self.index += 1
        return self.inner(batch)


# ------------------------------------------------------------------------ extra state
def _stateful_objects(root: Any, prefix: str, depth: int, seen: set) -> Iterator[Tuple[str, Any]]:
    """Attributes under ``root`` whose state a Lightning ``state_dict`` misses: torch
    ``Generator`` objects and this package's plain objects with ``state_dict`` /
    ``load_state_dict`` (per-prompt stat trackers, ...). Modules' own parameters and buffers
    are in the ``state_dict`` already; their children are not searched."""
    if depth < 0 or id(root) in seen:
        return
    seen.add(id(root))
    attrs = getattr(root, "__dict__", None)
    if not isinstance(attrs, dict):
        return
    for name, value in sorted(attrs.items(), key=lambda kv: kv[0]):
        if name.startswith("__") or value is None or isinstance(value, (str, bytes, int, float, bool, torch.Tensor)):
            continue
        path = f"{prefix}{name}"
        if isinstance(value, torch.Generator):
            yield path, value
        elif isinstance(value, (torch.nn.Module, torch.optim.Optimizer, type, dict, list, tuple, set)):
            continue
        elif hasattr(value, "state_dict") and hasattr(value, "load_state_dict"):
            if type(value).__module__.startswith("ddpo3d"):
                yield path, value
        elif hasattr(value, "__dict__"):
            yield from _stateful_objects(value, path + ".", depth - 1, seen)


def collect_extra_state(system: Any, roots: Tuple[str, ...] = ("guidance", "prompt_processor")) -> Dict[str, Any]:
    """State that later steps depend on but that is not in the ``state_dict``: generators and
    stateful helpers (per-prompt stat trackers, ...) under the system's ``roots``."""
    out: Dict[str, Any] = {}
    for root in roots:
        obj = getattr(system, root, None)
        if obj is None:
            continue
        for path, value in _stateful_objects(obj, f"{root}.", 4, set()):
            if isinstance(value, torch.Generator):
                out[path] = {"generator": value.get_state()}
            else:
                out[path] = {"state_dict": value.state_dict()}
    return out


def restore_extra_state(system: Any, state: Dict[str, Any]) -> List[str]:
    """Load what :func:`collect_extra_state` returned; returns the paths that were not found."""
    found = {}
    roots = tuple(sorted({p.split(".", 1)[0] for p in state}))
    for root in roots:
        obj = getattr(system, root, None)
        if obj is not None:
            found.update(dict(_stateful_objects(obj, f"{root}.", 4, set())))
    missing = []
    for path, value in state.items():
        target = found.get(path)
        if target is None:
            missing.append(path)
        elif "generator" in value:
            target.set_state(value["generator"])
        else:
            target.load_state_dict(value["state_dict"])
    return missing


# ------------------------------------------------------------------------ checkpoints
def nonfinite_tensors(checkpoint: Dict[str, Any], limit: int = 5) -> List[str]:
    """Names of floating tensors with NaN / inf in a checkpoint's ``state_dict`` and optimiser states."""
    bad: List[str] = []

    def visit(prefix: str, obj: Any) -> None:
        if len(bad) >= limit:
            return
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and not bool(torch.isfinite(obj).all()):
                bad.append(prefix)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                visit(f"{prefix}[{i}]", v)

    visit("state_dict", checkpoint.get("state_dict", {}))
    visit("optimizer_states", checkpoint.get("optimizer_states", []))
    return bad


# ------------------------------------------------------------------------ training step
def _is_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 0 or bool(torch.isfinite(value.detach()).all())
    if isinstance(value, (int, float)):
        return math.isfinite(float(value))
    return True


def note_logged(system: Any, name: str, value: Any) -> None:
    """Record a non-finite ``train/<term>`` the training step logs (called from ``log``)."""
    if not name.startswith("train/") or _is_finite(value):
        return
    terms = system.__dict__.setdefault("_nonfinite_logged", [])
    term = name[len("train/") :]
    if term not in terms:
        terms.append(term)


def _term_kind(terms: List[str]) -> Optional[str]:
    for kind in ("reward", "advantage"):
        for t in terms:
            if kind in t:
                return t
    for t in terms:
        if t.startswith("loss"):
            return t
    return None


def guarded_training_step(system: Any, step: Callable, batch: Any, batch_idx: int) -> Any:
    """Run ``step(batch, batch_idx)``; return ``None`` (Lightning then skips backward and the
    optimiser step) when a reward is non-finite, or the loss or a logged loss / advantage term is."""
    if system.__dict__.get("_in_guarded_step", False):  # nested (a subclass wraps again)
        return step(batch, batch_idx)
    guard = training_guard_of(system)
    snapshot_step_start(system)
    system.__dict__["_in_guarded_step"] = True
    system.__dict__["_nonfinite_logged"] = []
    try:
        with finite_rewards_required():
            out = step(batch, batch_idx)
    except NonFiniteError as exc:
        guard.skip(exc.term, str(exc))
        return None
    finally:
        system.__dict__["_in_guarded_step"] = False
    loss = out.get("loss") if isinstance(out, dict) else out
    logged = list(system.__dict__.get("_nonfinite_logged", []))
    term = _term_kind(logged)
    if term is None and isinstance(loss, torch.Tensor) and not _is_finite(loss):
        term = "loss"
    if term is not None:
        guard.skip(term, f"non-finite {', '.join(logged) or 'loss'}")
        return None
    return out


def training_guard_of(system: Any) -> "TrainingGuard":
    """The system's :class:`TrainingGuard` (created on first use)."""
    guard = system.__dict__.get("_training_guard")
    if guard is None:
        cfg = getattr(system, "cfg", None)
        limit = getattr(cfg, "max_consecutive_skips", DEFAULT_MAX_CONSECUTIVE_SKIPS) if cfg is not None else None
        guard = TrainingGuard(DEFAULT_MAX_CONSECUTIVE_SKIPS if limit is None else int(limit))
        system.__dict__["_training_guard"] = guard
    return guard


# ------------------------------------------------------------------------- the callback
class TrainingGuard(Callback):
    """Skips non-finite updates, checkpoints on exceptions and Ctrl-C, keeps resume exact.

    Args:
        max_consecutive_skips: stop after this many skipped steps in a row (0: never stop).
    """

    def __init__(self, max_consecutive_skips: int = DEFAULT_MAX_CONSECUTIVE_SKIPS) -> None:
        if max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {max_consecutive_skips}")
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.skipped_steps = 0
        self.consecutive = 0
        self.step_skip: Optional[Tuple[str, str]] = None  # (term, detail) of the current step
        self.first_skip_step: Optional[int] = None
        self.last_skip: Optional[Tuple[int, str, str]] = None
        self._collate: Optional[_RecordingCollate] = None
        self._replay: Dict[int, Dict[str, Any]] = {}
        self._val_rng: Optional[Dict[str, Any]] = None
        self._stop_requested = False
        self._prev_sigint: Any = None
        self._training_started = False  # set once the checkpoint (if any) is restored
        self._resume_step: Optional[int] = None

    @property
    def state_key(self) -> str:
        return "TrainingGuard"

    # ---- skipping ------------------------------------------------------------------------
    def skip(self, term: str, detail: str) -> None:
        """Mark the current step as skipped because ``term`` was non-finite."""
        if self.step_skip is None:
            self.step_skip = (term, detail)

    @property
    def step_skipped(self) -> bool:
        """Whether the current step's parameter update is skipped."""
        return self.step_skip is not None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step_skip = None
        if self._stop_requested:
            self._stop_requested = False
            path = self.save_last(trainer, pl_module)
            where = f"checkpoint saved to {path}" if path else "no checkpoint written"
            raise TrainingInterrupted(f"interrupted at step {trainer.global_step}: {where}")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.step_skip is None:
            scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
            if scaler is not None and scaler.is_enabled():
                return  # fp16 AMP: the GradScaler skips and rescales steps with inf gradients itself
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                        name = _param_name(pl_module, p)
                        self.skip("gradient", f"non-finite gradient of {name}")
                        break
                if self.step_skip is not None:
                    break
        if self.step_skip is not None:
            optimizer.zero_grad(set_to_none=True)  # no gradient: optimizer.step leaves params and moments alone

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step_skip is None:
            self.consecutive = 0
            return
        term, detail = self.step_skip
        step = trainer.global_step  # steps done, as in save/metrics.csv and checkpoint names
        self.skipped_steps += 1
        self.consecutive += 1
        if self.consecutive == 1:
            self.first_skip_step = step
        self.last_skip = (step, term, detail)
        pl_module.log("train/skipped_steps", float(self.skipped_steps))
        _warn(f"step {step} skipped (parameters unchanged): {detail}")
        if self.max_consecutive_skips and self.consecutive >= self.max_consecutive_skips:
            reward = getattr(getattr(pl_module, "guidance", None), "reward", None)
            named = f" The reward in use: {describe_reward(reward)}." if reward is not None and term != "reward" else ""
            raise NonFiniteError(
                term,
                f"training stopped: {self.consecutive} consecutive steps skipped (steps {self.first_skip_step}"
                f"-{step}) because of non-finite values; last: {detail}.{named} Fix the reward (or raise "
                f"system.max_consecutive_skips)",
            )

    # ---- exact resume --------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "consecutive": self.consecutive,
            "draw_states": dict(self._collate.recorded) if self._collate is not None else {},
            "rng_now": rng_state(),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        # the batches training steps k and k+1 consume are drawn from these RNG states
        state = (checkpoint.get("callbacks") or {}).get(self.state_key) or {}
        step = checkpoint.get("global_step")
        self._resume_step = step
        draws = state.get("draw_states") or {}
        self._replay = {}
        if step is not None and step in draws:
            self._replay[step] = draws[step]
            nxt = draws.get(step + 1, state.get("rng_now"))
            if nxt is not None:
                self._replay[step + 1] = nxt

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: Dict[str, Any]) -> None:
        bad = nonfinite_tensors(checkpoint)
        if bad:
            raise NonFiniteError("checkpoint", f"refusing to write a checkpoint with non-finite tensors: {bad}")

    def on_fit_start(self, trainer, pl_module) -> None:
        # Batches are drawn before on_train_start (Lightning prefetches one): wrap the
        # datamodule's train_dataloader so every loader it returns records its RNG states.
        dm = getattr(trainer, "datamodule", None)
        make = getattr(dm, "train_dataloader", None)
        if make is None or getattr(make, "_ddpo3d_recording", False):
            return

        def train_dataloader(*args, **kwargs):
            loader = make(*args, **kwargs)
            inner = getattr(loader, "collate_fn", None)
            if inner is not None:
                if isinstance(inner, _RecordingCollate):
                    inner = inner.inner
                collate = _RecordingCollate(inner, self._resume_step or 0, self._replay)
                try:
                    loader.collate_fn = collate
                    self._collate = collate
                except Exception:  # a loader that forbids it: resume stays approximate
                    pass
            return loader

        train_dataloader._ddpo3d_recording = True  # type: ignore[attr-defined]
        dm.train_dataloader = train_dataloader

    def on_train_start(self, trainer, pl_module) -> None:
        self._replay = {}
        self._training_started = True
        for cb in getattr(trainer, "checkpoint_callbacks", []):
            last = _last_path(cb)
            if last is not None and os.path.isfile(last):
                cb.last_model_path = last  # overwrite last.ckpt instead of writing last-v1.ckpt
        self._install_sigint()

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._val_rng = rng_state()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_rng is not None:
            set_rng_state(self._val_rng)
            self._val_rng = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_sigint()
        self._training_started = False

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_sigint()

    # ---- Ctrl-C and exceptions -----------------------------------------------------------
    def _install_sigint(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._prev_sigint is not None:
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise TrainingInterrupted("interrupted again: stopping now")
            self._stop_requested = True
            _warn("Ctrl-C: finishing this step, then saving ckpts/last.ckpt (press again to stop at once)")

        try:
            self._prev_sigint = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main interpreter
            self._prev_sigint = None

    def _restore_sigint(self) -> None:
        if self._prev_sigint is not None:
            try:
                signal.signal(signal.SIGINT, self._prev_sigint)
            finally:
                self._prev_sigint = None
        self._stop_requested = False

    def save_last(self, trainer, pl_module) -> Optional[str]:
        """Write ``<ckpt dir>/last.ckpt`` now; returns its path (``None``: no checkpoint folder)."""
        path = _last_ckpt_path(trainer, pl_module)
        if path is None:
            return None
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for cb in getattr(trainer, "checkpoint_callbacks", []):
            if _last_path(cb) == path:
                cb.last_model_path = path
        tmp = path + ".tmp"
        trainer.save_checkpoint(tmp)
        os.replace(tmp, path)  # never a half-written last.ckpt
        return path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_sigint()
        if trainer.state.fn != "fit" or getattr(exception, "ddpo3d_checkpoint", None) is not None:
            return
        if not self._training_started:  # e.g. the resume checkpoint failed to load: keep every file as it is
            return
        exception.ddpo3d_component = component_of(exception, pl_module)
        exception.ddpo3d_step = trainer.global_step
        if isinstance(exception, TrainingInterrupted) and str(exception).startswith("interrupted at step"):
            exception.ddpo3d_checkpoint = _last_ckpt_path(trainer, pl_module) or ""
            return  # saved at the step boundary already
        pl_module.__dict__["_saving_on_exception"] = True
        try:
            path = self.save_last(trainer, pl_module)
            exception.ddpo3d_checkpoint = path or ""
        except Exception as exc:  # e.g. non-finite parameters: keep the previous last.ckpt
            exception.ddpo3d_checkpoint = ""
            _warn(f"no checkpoint written after the error: {type(exc).__name__}: {exc}")
        finally:
            pl_module.__dict__["_saving_on_exception"] = False


def _param_name(module: Any, param: torch.Tensor) -> str:
    for name, p in module.named_parameters():
        if p is param:
            return name
    return f"a parameter of shape {list(param.shape)}"


def _last_path(cb: Any) -> Optional[str]:
    dirpath = getattr(cb, "dirpath", None)
    if not dirpath or not getattr(cb, "save_last", False):
        return None
    return os.path.join(dirpath, getattr(cb, "CHECKPOINT_NAME_LAST", "last") + getattr(cb, "FILE_EXTENSION", ".ckpt"))


def _last_ckpt_path(trainer: Any, pl_module: Any) -> Optional[str]:
    for cb in getattr(trainer, "checkpoint_callbacks", []):
        dirpath = getattr(cb, "dirpath", None)
        if dirpath:
            return os.path.join(dirpath, "last.ckpt")
    save_dir = getattr(pl_module, "_save_dir", None)
    if save_dir:
        return os.path.join(os.path.dirname(os.path.abspath(save_dir)), "ckpts", "last.ckpt")
    return None


def _warn(message: str) -> None:
    try:
        from ddpo3d.host import warn

        warn(message)
    except Exception:  # pragma: no cover - host not importable
        import logging

        logging.getLogger("ddpo3d").warning(message)


def format_training_error(exc: BaseException) -> str:
    """One line for the launcher: the component, the exception type and text, and the checkpoint."""
    text = str(exc).strip().replace("\n", " ") or type(exc).__name__
    component = getattr(exc, "ddpo3d_component", None)
    if isinstance(exc, (NonFiniteError, TrainingInterrupted)):
        line = text
    elif component:
        line = f"{component} raised {type(exc).__name__}: {text}"
    else:
        line = f"{type(exc).__name__}: {text}"
    step = getattr(exc, "ddpo3d_step", None)
    path = getattr(exc, "ddpo3d_checkpoint", None)
    if path:
        line += f" [training step {step}; checkpoint {path}; continue with resume={path}]"
    elif path == "" and step is not None:
        line += f" [training step {step}; no checkpoint written]"
    return line


# ------------------------------------------------------------------------- system mixin
def _guard_step(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def training_step(self, batch, batch_idx, *args, **kwargs):
        return guarded_training_step(self, lambda b, i: fn(self, b, i, *args, **kwargs), batch, batch_idx)

    training_step._ddpo3d_guarded = True  # type: ignore[attr-defined]
    return training_step


class ReliableSystemMixin:
    """What a LightningModule needs for :class:`TrainingGuard` (put it before the host's
    system class in the bases; subclasses' own ``training_step`` are wrapped automatically).

    Config key read from ``self.cfg``: ``max_consecutive_skips``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("training_step")
        if fn is not None and not getattr(fn, "_ddpo3d_guarded", False):
            cls.training_step = _guard_step(fn)

    def training_step(self, batch, batch_idx, *args, **kwargs):
        parent = super().training_step
        return guarded_training_step(self, lambda b, i: parent(b, i, *args, **kwargs), batch, batch_idx)

    training_step._ddpo3d_guarded = True  # type: ignore[attr-defined]

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        note_logged(self, name, value)
        super().log(name, value, *args, **kwargs)

    def configure_callbacks(self):
        callbacks = super().configure_callbacks() or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        if not any(isinstance(cb, TrainingGuard) for cb in callbacks):
            callbacks.append(training_guard_of(self))
        return callbacks

    @property
    def training_guard(self) -> TrainingGuard:
        """This system's :class:`TrainingGuard`."""
        return training_guard_of(self)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        snapshot = self.__dict__.get("_step_start_state")
        trainer = self.__dict__.get("_trainer")
        if (
            self.__dict__.get("_saving_on_exception")
            and snapshot is not None
            and trainer is not None
            and snapshot[0] == trainer.global_step
        ):
            extra = snapshot[1]  # the failed step did not update the parameters: its start state
        else:
            extra = collect_extra_state(self)
        checkpoint["ddpo3d"] = {"extra_state": extra, "elapsed_s": self.__dict__.get("_elapsed_before", 0.0)}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.__dict__["_pending_extra_state"] = checkpoint.get("ddpo3d")

    def on_train_start(self) -> None:
        super().on_train_start()
        pending = self.__dict__.pop("_pending_extra_state", None)
        if pending:
            missing = restore_extra_state(self, pending.get("extra_state", {}))
            if missing:
                _warn(f"resume: state not restored (not found in this run): {', '.join(missing)}")
            self.__dict__["_elapsed_resumed"] = float(pending.get("elapsed_s", 0.0))


def snapshot_step_start(system: Any) -> None:
    """Remember the extra state at the start of a training step (used if the step fails)."""
    trainer = system.__dict__.get("_trainer")
    if trainer is not None:
        system.__dict__["_step_start_state"] = (trainer.global_step, collect_extra_state(system))


#: loss weights whose sign decides whether the reward is maximised
REWARD_LOSS_WEIGHTS = ("lambda_ddpo", "lambda_reward")


def warn_negative_reward_weights(loss_cfg: Any) -> List[str]:
    """Notice for a negative ``lambda_ddpo`` / ``lambda_reward`` (the run would *minimise* the
    reward); returns the keys warned about. Schedules ``[start_step, start, end, end_step]``
    count when either value is negative."""
    warned = []
    for key in REWARD_LOSS_WEIGHTS:
        value = loss_cfg.get(key, None) if hasattr(loss_cfg, "get") else None
        if value is None:
            continue
        values = list(value)[1:3] if isinstance(value, (list, tuple)) or hasattr(value, "__len__") else [value]
        try:
            negative = any(float(v) < 0 for v in values)
        except (TypeError, ValueError):
            continue
        if negative:
            warned.append(key)
            _warn(
                f"system.loss.{key} is negative ({value}): the alignment loss is subtracted, so training "
                "MINIMISES the reward. Use a positive weight to raise the reward"
            )
    return warned
