"""Submit a suite's pending jobs with submitit and follow their progress.

* ``local``: one submitit local job (a worker) per GPU, each working through its shard of the
  grid in order (``jobs[i::n_gpus]``) on its own GPU (``CUDA_VISIBLE_DEVICES``); on a machine
  without GPUs, one worker on the CPU. Workers keep running if this process dies; re-running
  the command then skips finished jobs and resumes interrupted ones.
* ``slurm``: one SLURM array task per job (``submitit.SlurmExecutor.map_array``), with the
  user's partition, time limit, GPUs, CPUs, memory and extra ``#SBATCH`` parameters.
* ``debug``: ``submitit.DebugExecutor``, everything in this process (tests).
"""

from __future__ import annotations

import os
import sys
import time

from ddpo3d.suite.runner import JobDir, run_job, run_shard
from ddpo3d.suite.spec import EvalProtocol
from ddpo3d.utils.typing import Any, Dict, List, Optional

EXECUTORS = ("local", "slurm", "debug")


def visible_gpus(requested: Optional[int]) -> List[int]:
    """Physical GPU ids for the local workers (``[]``: CPU).

    Args:
        requested: ``--gpus``; ``None`` uses every visible CUDA device.
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip() == "":
        ids: List[int] = []
    elif env:
        try:
            ids = [int(x) for x in env.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"CUDA_VISIBLE_DEVICES={env!r}: the local executor needs integer GPU ids") from None
    else:
        try:
            import torch

            ids = list(range(torch.cuda.device_count()))
        except Exception:
            ids = []
    if requested is None:
        return ids
    if requested > len(ids):
        raise ValueError(f"--gpus {requested} asked for more GPUs than the {len(ids)} visible")
    return ids[:requested]


def submit_local(out: str, job_ids: List[str], protocol: EvalProtocol, cwd: str, gpus: List[int]) -> List[Any]:
    """One submitit local worker per GPU (or one on the CPU); returns the submitit jobs."""
    import submitit

    executor = submitit.LocalExecutor(folder=os.path.join(out, "submitit", "%j"))
    jobs = []
    if not gpus:
        executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=0)
        jobs.append(executor.submit(run_shard, out, job_ids, protocol, cwd))
        return jobs
    for i, gpu in enumerate(gpus):
        shard = job_ids[i :: len(gpus)]
        if not shard:
            continue
        executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=1, visible_gpus=[gpu])
        jobs.append(executor.submit(run_shard, out, shard, protocol, cwd))
    return jobs


def slurm_executor(out: str, name: str, options: Dict[str, Any]) -> Any:
    """A ``submitit.SlurmExecutor`` with the suite's options.

    Args:
        options: ``partition``, ``time`` (minutes), ``gpus_per_node``, ``cpus_per_task``, ``mem``
            (e.g. ``"64G"``), ``array_parallelism``, ``account``, ``qos``, ``constraint``,
            ``additional_parameters`` (dict of extra ``#SBATCH`` keys), ``setup`` (shell lines).
    """
    import submitit

    executor = submitit.SlurmExecutor(folder=os.path.join(out, "submitit", "%j"), max_num_timeout=0)
    params: Dict[str, Any] = {"job_name": f"suite-{name}", "nodes": 1, "ntasks_per_node": 1}
    for key in ("partition", "time", "gpus_per_node", "cpus_per_task", "mem", "array_parallelism", "setup"):
        if options.get(key) is not None:
            params[key] = options[key]
    extra = dict(options.get("additional_parameters") or {})
    for key in ("account", "qos", "constraint"):
        if options.get(key):
            extra[key] = options[key]
    if extra:
        params["additional_parameters"] = extra
    executor.update_parameters(**params)
    return executor


def submit_slurm(out: str, name: str, job_ids: List[str], protocol: EvalProtocol, cwd: str, options: Dict) -> List[Any]:
    """One array task per job; returns the submitit jobs."""
    executor = slurm_executor(out, name, options)
    n = len(job_ids)
    return executor.map_array(run_job, [out] * n, job_ids, [protocol] * n, [cwd] * n)


def submit_debug(out: str, job_ids: List[str], protocol: EvalProtocol, cwd: str) -> List[Any]:
    """Everything in this process, when ``result()`` is called."""
    import submitit

    executor = submitit.DebugExecutor(folder=os.path.join(out, "submitit", "%j"))
    return [executor.submit(_debug_shard, out, job_ids, protocol, cwd)]


def _debug_shard(out: str, job_ids: List[str], protocol: EvalProtocol, cwd: str) -> Dict[str, Any]:
    """``run_shard`` in-process; an exception is returned, not raised (the debug executor would
    open a debugger on it)."""
    import traceback

    try:
        return run_shard(out, job_ids, protocol, cwd, True)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def counts(out: str, job_ids: List[str], protocol_key: str) -> Dict[str, List[str]]:
    """Job ids by state (``done``, ``running``, ``failed``, ``pending``)."""
    by: Dict[str, List[str]] = {"done": [], "running": [], "failed": [], "pending": []}
    for job_id in job_ids:
        by[JobDir(out, job_id).state(protocol_key)].append(job_id)
    return by


def failure_line(out: str, job_id: str) -> str:
    info = JobDir(out, job_id).failure() or {}
    stage = info.get("stage", "?")
    rc = info.get("rc")
    return f"failed: {job_id} (stage {stage}{'' if rc is None else f', exit {rc}'}) log: {info.get('log', '?')}"


class Progress:
    """A tqdm bar over the grid (done / running / failed), printing each new failure's log path."""

    def __init__(self, out: str, job_ids: List[str], protocol_key: str, stream: Any = None) -> None:
        from tqdm import tqdm

        self.out, self.job_ids, self.key = out, job_ids, protocol_key
        self.stream = stream or sys.stderr
        self.reported: set = set()
        self.bar = tqdm(total=len(job_ids), desc="suite", unit="job", file=self.stream, dynamic_ncols=True)

    def update(self) -> Dict[str, List[str]]:
        by = counts(self.out, self.job_ids, self.key)
        for job_id in by["failed"]:
            if job_id not in self.reported:
                self.reported.add(job_id)
                self.bar.write(failure_line(self.out, job_id), file=self.stream)
        self.bar.n = len(by["done"])
        self.bar.set_postfix_str(f"running {len(by['running'])}, failed {len(by['failed'])}")
        self.bar.refresh()
        return by

    def close(self) -> None:
        self.bar.close()


def follow(jobs: List[Any], progress: Progress, poll_s: float = 2.0) -> None:
    """Refresh ``progress`` until every submitit job has ended."""
    while True:
        progress.update()
        if all(j.done() for j in jobs):
            break
        time.sleep(poll_s)
    progress.update()


__all__ = [
    "EXECUTORS",
    "Progress",
    "counts",
    "failure_line",
    "follow",
    "slurm_executor",
    "submit_debug",
    "submit_local",
    "submit_slurm",
    "visible_gpus",
]
