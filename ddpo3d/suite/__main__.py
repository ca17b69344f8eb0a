"""``python -m ddpo3d.suite run|status|gather|report``: prompt suites on submitit.

    python -m ddpo3d.suite run SUITE.yaml --out DIR [--executor local|slurm|debug] [--gpus N]
    python -m ddpo3d.suite run SUITE.yaml --out DIR --executor slurm --partition gpu --time 240 --gpus-per-job 1
    python -m ddpo3d.suite status DIR
    python -m ddpo3d.suite gather DIR [--by-prompt]
    python -m ddpo3d.suite report DIR [--copy-media]           (DIR/report/index.html)
    python -m ddpo3d.suite report TRIAL [TRIAL ...] --out OUT   (plain trial folders)

Re-running the same ``run`` command continues the grid: finished jobs are skipped, interrupted
ones resume from their ``ckpts/last.ckpt``, failed ones are retried.
"""

from __future__ import annotations

import argparse
import os
import sys

from ddpo3d.utils.typing import Any, Dict, List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddpo3d.suite", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or continue) every job of a suite")
    r.add_argument("suite", help="SUITE.yaml")
    r.add_argument("--out", required=True, help="output folder of the suite (jobs/, suite.json, results)")
    r.add_argument("--executor", choices=("local", "slurm", "debug"), default="local")
    r.add_argument(
        "--gpus", type=int, default=None, help="local: workers, one per GPU (default: every visible GPU; 0: CPU)"
    )
    r.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="extra override for every job (repeatable)"
    )
    r.add_argument("--dry-run", action="store_true", help="list the jobs and their state; write and submit nothing")
    r.add_argument("--poll", type=float, default=2.0, help="seconds between progress refreshes")
    s = r.add_argument_group("slurm")
    s.add_argument("--partition", default=None)
    s.add_argument("--time", type=int, default=None, help="time limit per job, minutes")
    s.add_argument("--gpus-per-job", type=int, default=1)
    s.add_argument("--cpus-per-task", type=int, default=None)
    s.add_argument("--mem", default=None, help="memory per job, e.g. 64G")
    s.add_argument("--array-parallelism", type=int, default=None, help="most array tasks running at once")
    s.add_argument("--account", default=None)
    s.add_argument("--qos", default=None)
    s.add_argument("--constraint", default=None)
    s.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH --KEY=VALUE")
    s.add_argument("--slurm-setup", action="append", default=[], metavar="LINE", help="shell line run before the job")
    s.add_argument("--wait", action="store_true", help="slurm: follow the array until it ends")
    st = sub.add_parser("status", help="jobs done / running / failed / pending, with failed jobs' logs")
    st.add_argument("out")
    g = sub.add_parser("gather", help="results.csv, a Markdown table of mean ± std per config, figures")
    g.add_argument("out")
    g.add_argument("--by-prompt", action="store_true", help="one table row per config × prompt")
    g.add_argument("--no-figures", action="store_true")
    rp = sub.add_parser("report", help="an HTML page comparing the configs side by side (DIR/report/index.html)")
    rp.add_argument("paths", nargs="+", metavar="DIR", help="a suite folder, or trial folders (outputs/<name>/<tag>)")
    rp.add_argument("--out", default=None, help="report folder (default: DIR/report; required for trial folders)")
    rp.add_argument(
        "--copy-media",
        action="store_true",
        help="copy the videos and images into the report folder (default: link them relatively)",
    )
    return p


def slurm_options(args: argparse.Namespace) -> Dict[str, Any]:
    extra: Dict[str, str] = {}
    for item in args.slurm_param:
        if "=" not in item:
            raise ValueError(f"--slurm-param expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        extra[k.strip().lstrip("-").replace("-", "_")] = v
    return {
        "partition": args.partition,
        "time": args.time,
        "gpus_per_node": args.gpus_per_job,
        "cpus_per_task": args.cpus_per_task,
        "mem": args.mem,
        "array_parallelism": args.array_parallelism,
        "account": args.account,
        "qos": args.qos,
        "constraint": args.constraint,
        "additional_parameters": extra,
        "setup": list(args.slurm_setup) or None,
    }


def prepare(suite: Any, out: str) -> List[Any]:
    """Write ``suite.json`` (the manifest) and every job's ``job.json``; returns the jobs."""
    from ddpo3d.suite.runner import JobDir, now, read_json, write_json

    jobs = suite.jobs()
    os.makedirs(os.path.join(out, "jobs"), exist_ok=True)
    for job in jobs:
        jd = JobDir(out, job.job_id)
        os.makedirs(jd.root, exist_ok=True)
        if read_json(jd.path("job.json")) != job.to_dict():
            write_json(jd.path("job.json"), job.to_dict())
    write_json(
        os.path.join(out, "suite.json"),
        {
            "suite": os.path.abspath(suite.path),
            "name": suite.name,
            "cwd": os.getcwd(),
            "written": now(),
            "protocol_key": suite.protocol.key(),
            "protocol": suite.protocol.to_dict(),
            "jobs": [j.to_dict() for j in jobs],
        },
    )
    return jobs


def cmd_run(args: argparse.Namespace) -> int:
    from ddpo3d.suite import executors as ex
    from ddpo3d.suite.spec import load_suite

    out = os.path.abspath(args.out)
    suite = load_suite(args.suite, args.override)
    key = suite.protocol.key()
    if args.dry_run:  # nothing is written
        for job in suite.jobs():
            print(f"  {state_line(out, job.job_id, key)}")
        return 0
    jobs = prepare(suite, out)
    ids = [j.job_id for j in jobs]
    by = ex.counts(out, ids, key)
    print(
        f"suite {suite.name}: {len(ids)} jobs ({len(suite.configs)} configs x {len(suite.prompts)} prompts x "
        f"{len(suite.seeds)} seeds) in {out}; {len(by['done'])} done, {len(by['running'])} running elsewhere, "
        f"{len(by['failed'])} failed before (retried), {len(by['pending'])} to run"
    )
    if by["running"]:
        print("still running (skipped): " + ", ".join(by["running"]))
    todo = by["failed"] + by["pending"]
    todo = [i for i in ids if i in set(todo)]  # grid order
    if not todo:
        print(f"nothing to run; python -m ddpo3d.suite gather {args.out}")
        return 0
    cwd = os.getcwd()
    if args.executor == "debug":
        sub = ex.submit_debug(out, todo, suite.protocol, cwd)
        for j in sub:
            res = j.result()
            if "error" in res:
                print(res["traceback"], file=sys.stderr)
                raise RuntimeError(f"the debug worker stopped: {res['error']}")
    elif args.executor == "local":
        gpus = ex.visible_gpus(args.gpus)
        print(f"local: {max(1, len(gpus))} worker(s) on " + (f"GPU {', '.join(map(str, gpus))}" if gpus else "the CPU"))
        sub = ex.submit_local(out, todo, suite.protocol, cwd, gpus)
        progress = ex.Progress(out, todo, key)
        try:
            ex.follow(sub, progress, args.poll)
        except KeyboardInterrupt:
            progress.close()
            print("\ninterrupted: workers stop after saving ckpts/last.ckpt; re-run the same command to continue")
            return 130
        progress.close()
        for j in sub:
            try:
                crashed = j.exception() is not None
            except Exception:  # the worker died without a result
                crashed = True
            if crashed:
                print(f"worker {j.job_id} crashed; its log: {j.paths.stderr}")
    else:
        sub = ex.submit_slurm(out, suite.name, todo, suite.protocol, cwd, slurm_options(args))
        array_id = sub[0].job_id.split("_")[0] if sub else "?"
        print(f"slurm: submitted array {array_id} ({len(sub)} tasks); logs under {os.path.join(out, 'submitit')}")
        print(f"follow with: python -m ddpo3d.suite status {args.out}")
        if not args.wait:
            return 0
        progress = ex.Progress(out, todo, key)
        ex.follow(sub, progress, max(args.poll, 30.0))
        progress.close()
    return summary(out, ids, key, args.out)


def state_line(out: str, job_id: str, key: str) -> str:
    """``<state>  <job_id>`` for listings."""
    from ddpo3d.suite.runner import JobDir

    return f"{JobDir(out, job_id).state(key):8s} {job_id}"


def summary(out: str, ids: List[str], key: str, shown: Optional[str] = None) -> int:
    from ddpo3d.suite import executors as ex

    by = ex.counts(out, ids, key)
    print(
        f"{len(by['done'])}/{len(ids)} done, {len(by['running'])} running, {len(by['failed'])} failed, "
        f"{len(by['pending'])} pending"
    )
    for job_id in by["failed"]:
        print("  " + ex.failure_line(out, job_id))
    if len(by["done"]) == len(ids):
        print(f"all done; python -m ddpo3d.suite gather {shown or out}")
        return 0
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from ddpo3d.suite.gather import load_manifest

    out = os.path.abspath(args.out)
    manifest = load_manifest(out)
    ids = [j["job_id"] for j in manifest["jobs"]]
    key = manifest["protocol_key"]
    for i in ids:
        print(f"  {state_line(out, i, key)}")
    return summary(out, ids, key, args.out)


def cmd_gather(args: argparse.Namespace) -> int:
    from ddpo3d.suite.gather import gather

    res = gather(os.path.abspath(args.out), by_prompt=args.by_prompt, figures=not args.no_figures)
    for name, reason in res["skipped"].items():
        print(f"notice: metric {name!r} skipped (weights missing): {reason}")
    if res["missing"]:
        print(f"notice: {len(res['missing'])} job(s) without metrics yet: {', '.join(res['missing'][:5])}")
    print(res["table"])
    print(f"wrote {res['csv']} ({len(res['rows'])} rows)")
    for p in res["figures"]:
        print(f"wrote {p}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ddpo3d.suite.report import build_report, estimate_size, gpteval3d_prompts

    res = build_report(args.paths, out=args.out, copy_media=args.copy_media)
    data = res["data"]
    missing = [c for c in data.cells if c.media is None]
    print(
        f"wrote {res['index']}: {len(data.configs)} configs, {len(data.cells)} jobs, "
        f"{len(data.cells) - len(missing)} with a turntable; {res['html_bytes'] / 1e3:.1f} kB of HTML"
    )
    for c in missing[:10]:
        print(f"  no media: {c.config} / {c.prompt} (seed {c.seed}): {c.reason}")
    if data.cells:
        size = estimate_size(data, res["out"], prompts=gpteval3d_prompts() or 110, configs=5)
        print(
            f"size at 110 prompts x 5 configs ({size['cells']} cells, from this page): HTML {size['html_bytes'] / 1e6:.2f} MB "
            f"({size['html_per_cell'] / 1e3:.2f} kB per cell), media {size['media_bytes'] / 1e6:.1f} MB "
            f"({size['media_per_cell'] / 1e3:.1f} kB of video per cell at this protocol's resolution and view count; "
            f"+{size['fallback_per_cell'] / 1e3:.1f} kB per cell of fallback views, loaded only if a video fails)"
        )
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ddpo3d.utils.config import ConfigError

    try:
        commands = {"run": cmd_run, "status": cmd_status, "gather": cmd_gather, "report": cmd_report}
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
