"""Run one suite job (train, then score with the protocol) in its own folder, resumably.

Layout of ``<out>/jobs/<job_id>/``:

| path | what it is |
|---|---|
| ``job.json`` | the job: config, label, prompt, seed, overrides, key (hash of the resolved config) |
| ``trial/`` | the run's trial folder, pinned (``exp_root_dir=<out>/jobs name=<job_id> tag=trial use_timestamp=false``) |
| ``eval-<protocol>/`` | the protocol's render of the final checkpoint (``--test``): RGB and normal views |
| ``metrics.json`` | the protocol's metrics for this job (written once; redone only when the protocol changes) |
| ``TRAINED`` | training finished: the job is never trained again |
| ``DONE`` / ``RUNNING`` / ``FAILED`` | state markers (JSON: host, pid, times, return code, log path) |
| ``attempts.jsonl`` | one line per training attempt (start, resume checkpoint, return code) |
| ``logs/`` | ``train-<n>.log`` and ``eval-<n>.log``: the launcher's output |

A job whose folder holds ``TRAINED`` is not trained again (only scored if it has no metrics
for the current protocol); ``DONE`` means trained and scored. Otherwise, when ``trial/ckpts/last.ckpt``
(or the newest complete checkpoint there, see :meth:`JobDir.latest_ckpt`) exists the job is
launched with ``resume=<that file>``; a trial folder without a usable checkpoint is moved aside to ``trial.stale-<n>`` (nothing is deleted) and the
job starts over. The suite therefore never launches into an existing trial folder without
``resume=``, which is what a launcher that refuses to overwrite another run's files needs.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile

from ddpo3d.suite.spec import EvalProtocol, quote_value
from ddpo3d.utils.typing import Any, Dict, List, Optional

DONE, RUNNING, FAILED = "DONE", "RUNNING", "FAILED"
#: written once training has finished; such a job is never trained again
TRAINED = "TRAINED"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def find_launcher() -> str:
    """The project's ``launch.py`` (``$DDPO3D_LAUNCH`` or the repository root)."""
    path = os.environ.get("DDPO3D_LAUNCH") or os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch.py"
    )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"launch.py not found at {path}; set DDPO3D_LAUNCH to the project's launch.py")
    return path


def checkpoint_ok(path: str) -> bool:
    """Whether ``path`` is a complete torch checkpoint (a zip archive whose members all pass CRC).

    A process killed while writing leaves a truncated file; resuming from it would fail.
    """
    if not os.path.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


#: a job's worker touches its RUNNING marker this often (seconds) while its run goes on
HEARTBEAT_S = 60.0
#: a RUNNING marker of another host untouched for this long belongs to a dead worker
STALE_AFTER_S = 10 * HEARTBEAT_S


def _stale(marker: Dict[str, Any], path: str) -> bool:
    """A ``RUNNING`` marker left by a dead worker: a process of this host that no longer exists,
    or (another host, e.g. a SLURM node) a marker without a heartbeat for ``STALE_AFTER_S``."""
    if marker.get("host") != socket.gethostname():
        try:
            return time.time() - os.path.getmtime(path) > STALE_AFTER_S
        except OSError:
            return True
    try:
        os.kill(int(marker.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OSError):
        return False
    return False


class JobDir:
    """Paths and state markers of one job folder."""

    def __init__(self, out: str, job_id: str) -> None:
        self.out = os.path.abspath(out)
        self.job_id = job_id
        self.root = os.path.join(self.out, "jobs", job_id)

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def trial(self) -> str:
        return self.path("trial")

    @property
    def last_ckpt(self) -> str:
        return self.path("trial", "ckpts", "last.ckpt")

    def latest_ckpt(self) -> Optional[str]:
        """The newest complete checkpoint under ``trial/ckpts`` (``None`` if there is none).

        Usually ``last.ckpt``; but when a run resumes from a ``last.ckpt`` that Lightning's
        ``ModelCheckpoint`` did not write itself (Ctrl-C's checkpoint), it saves the new last
        state as ``last-v1.ckpt`` instead of overwriting it, so the newest file is taken, with
        ``last*`` preferred at equal times.
        """
        folder = self.path("trial", "ckpts")
        if not os.path.isdir(folder):
            return None
        files = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".ckpt")]
        files = [f for f in files if checkpoint_ok(f)]
        if not files:
            return None
        return max(files, key=lambda f: (os.path.getmtime(f), os.path.basename(f).startswith("last")))

    def spec(self) -> Dict[str, Any]:
        data = read_json(self.path("job.json"))
        if data is None:
            raise FileNotFoundError(f"job spec missing or unreadable: {self.path('job.json')}")
        return data

    def attempts(self) -> List[Dict[str, Any]]:
        out = []
        try:
            with open(self.path("attempts.jsonl"), encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        out.append(json.loads(line))
        except OSError:
            pass
        return out

    def add_attempt(self, record: Dict[str, Any]) -> None:
        with open(self.path("attempts.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def mark(self, name: str, **data: Any) -> None:
        for other in (DONE, RUNNING, FAILED):
            if other != name:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path(other))
        write_json(self.path(name), {"time": now(), "host": socket.gethostname(), "pid": os.getpid(), **data})

    def state(self, protocol_key: Optional[str] = None) -> str:
        """``done`` (trained and scored under ``protocol_key``), ``failed``, ``running`` or ``pending``."""
        if os.path.isfile(self.path(FAILED)):
            return "failed"
        running = read_json(self.path(RUNNING))
        if running is not None and not _stale(running, self.path(RUNNING)):
            return "running"
        if os.path.isfile(self.path(DONE)):
            metrics = read_json(self.path("metrics.json"))
            if protocol_key is None or (metrics and metrics.get("protocol_key") == protocol_key):
                return "done"
        return "pending"

    def failure(self) -> Optional[Dict[str, Any]]:
        return read_json(self.path(FAILED))


class _Forward:
    """While a launcher child runs, SIGTERM/SIGUSR2/SIGINT to this process become SIGINT to the
    child (Ctrl-C in a run saves ``ckpts/last.ckpt``), then the child is awaited."""

    def __init__(self) -> None:
        self.child: Optional[subprocess.Popen] = None
        self.signalled: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.signalled = signum
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signal.SIGINT)

    def __enter__(self) -> "_Forward":
        for sig in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR2", None)):
            if sig is None:
                continue
            with contextlib.suppress(ValueError, OSError):  # not the main thread: leave handlers
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, OSError):
                signal.signal(sig, old)


_LAUNCH_MODULES: Dict[str, Any] = {}


def _launch_module(path: str) -> Any:
    """``launch.py`` imported once per process (its logging set-up is per module)."""
    if path not in _LAUNCH_MODULES:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_ddpo3d_suite_launch", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _LAUNCH_MODULES[path] = module
    return _LAUNCH_MODULES[path]


def run_launcher(
    argv: List[str], log_path: str, cwd: str, in_process: bool = False, heartbeat: Optional[str] = None
) -> int:
    """Run ``launch.py argv`` with its output appended to ``log_path``; returns the exit status.

    Args:
        argv: launch.py arguments (after the script).
        log_path: log file (stdout and stderr).
        cwd: working directory (extensions under ``custom/`` are found from here).
        in_process: call ``launch.main`` in this process (the debug executor) instead of a child.
        heartbeat: a file whose modification time is refreshed every ``HEARTBEAT_S`` while the child runs.
    """
    launcher = find_launcher()
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"[suite] {now()} python {launcher} {' '.join(argv)}\n")
        log.flush()
        if in_process:
            module = _launch_module(launcher)
            old_cwd = os.getcwd()
            try:
                os.chdir(cwd)
                with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                    return int(module.main(argv))
            except SystemExit as exc:
                return int(exc.code or 0)
            finally:
                os.chdir(old_cwd)
        with _Forward() as fwd:
            fwd.child = subprocess.Popen(
                [sys.executable, launcher, *argv], cwd=cwd, stdout=log, stderr=subprocess.STDOUT
            )
            while True:
                try:
                    rc = fwd.child.wait(timeout=HEARTBEAT_S)
                    break
                except subprocess.TimeoutExpired:
                    if heartbeat is not None:
                        with contextlib.suppress(OSError):
                            os.utime(heartbeat)
                except KeyboardInterrupt:  # pragma: no cover - handled by _Forward
                    continue
            if fwd.signalled is not None:
                raise KeyboardInterrupt(f"signal {fwd.signalled}")
            return rc


def pin_overrides(job: JobDir, tag: str) -> List[str]:
    """Overrides placing a run's trial folder at ``<job>/<tag>`` (no timestamp)."""
    return [
        f"exp_root_dir={quote_value(os.path.join(job.out, 'jobs'))}",
        f"name={quote_value(job.job_id)}",
        f"tag={quote_value(tag)}",
        "use_timestamp=false",
    ]


def _set_aside(path: str) -> str:
    n = 1
    while os.path.exists(f"{path}.stale-{n}"):
        n += 1
    os.replace(path, f"{path}.stale-{n}")
    return f"{path}.stale-{n}"


def train(job: JobDir, cwd: str, in_process: bool = False) -> Dict[str, Any]:
    """Train a job (resuming from its last checkpoint when there is one).

    Returns:
        ``{"rc": exit status, "log": log path, "resume": checkpoint or None}``.
    """
    spec = job.spec()
    resume = None
    latest = job.latest_ckpt()
    if latest is not None:
        resume = latest
    elif os.path.exists(job.trial):
        moved = _set_aside(job.trial)
        print(f"[suite] {job.job_id}: no usable ckpts/last.ckpt; previous trial folder moved to {moved}", flush=True)
    n = len(job.attempts()) + 1
    log = job.path("logs", f"train-{n}.log")
    argv = ["--config", spec["config"], "--train", *spec["overrides"], *pin_overrides(job, "trial")]
    argv.append("checkpoint.save_last=true")
    if resume is not None:
        argv.append(f"resume={quote_value(resume)}")
    record = {"attempt": n, "start": now(), "host": socket.gethostname(), "resume": resume, "log": log}
    job.add_attempt(record)
    rc = run_launcher(argv, log, cwd, in_process=in_process, heartbeat=job.path(RUNNING))
    return {"rc": rc, "log": log, "resume": resume}


def run_job(out: str, job_id: str, protocol: EvalProtocol, cwd: str, in_process: bool = False) -> str:
    """Train (unless ``DONE``) and score (unless scored under this protocol) one job.

    Returns:
        The job's final state: ``done``, ``failed``, ``interrupted`` or ``running elsewhere``.
    """
    from ddpo3d.suite.protocol import evaluate_job

    job = JobDir(out, job_id)
    state = job.state(protocol.key())
    if state == "done":
        return "done"
    if state == "running":  # another live worker has it (e.g. one left by an earlier invocation)
        return "running elsewhere"
    trained = os.path.isfile(job.path(TRAINED))
    job.mark(RUNNING, stage="score" if trained else "train", attempt=len(job.attempts()) + (0 if trained else 1))
    try:
        if not trained:
            res = train(job, cwd, in_process=in_process)
            if res["rc"] != 0:
                job.mark(FAILED, stage="train", rc=res["rc"], log=res["log"])
                return "failed"
            if job.latest_ckpt() is None:
                job.mark(FAILED, stage="train", rc=0, log=res["log"], error="training ended without ckpts/last.ckpt")
                return "failed"
            write_json(job.path(TRAINED), {"time": now(), "log": res["log"], "resume": res["resume"]})
        job.mark(RUNNING, stage="score")
        try:
            ok, log = evaluate_job(job, protocol, cwd, in_process=in_process)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a scoring error must not lose the trained job
            log = job.path("logs", "eval.log")
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"[suite] scoring failed: {type(exc).__name__}: {exc}\n")
            ok = False
        if not ok:
            job.mark(FAILED, stage="score", log=log)
            return "failed"
        job.mark(DONE, stage="score")
        return "done"
    except KeyboardInterrupt:
        job.mark(FAILED, stage="interrupted", rc=130, log=job.path("logs"))
        return "interrupted"


def run_shard(out: str, job_ids: List[str], protocol: EvalProtocol, cwd: str, in_process: bool = False) -> Dict:
    """A worker: the jobs of one shard, in order (one GPU, or the CPU).

    Returns:
        ``{job_id: state}``.
    """
    results = {}
    for job_id in job_ids:
        state = run_job(out, job_id, protocol, cwd, in_process=in_process)
        results[job_id] = state
        print(f"[suite] {job_id}: {state}", flush=True)
        if state == "interrupted":
            break
    return results


__all__ = ["JobDir", "checkpoint_ok", "find_launcher", "pin_overrides", "run_job", "run_launcher", "run_shard", "train"]
