"""A stand-in for ``launch.py`` used by the suite tests: same command line, no training.

``--train`` writes ``<trial>/configs/parsed.yaml`` and ``<trial>/ckpts/last.ckpt`` (a zip, like a
torch checkpoint; ``last-v1.ckpt`` when resuming, as Lightning does) and refuses an existing trial folder without ``resume=`` (what a launcher that
protects other runs' files does). ``--test`` writes ``save/it<step>-test-rgb/<i>.png`` views whose
brightness depends on the seed, and a ``save/metrics.csv`` with a ``psnr`` row.

Every call appends ``{"argv": ..., "trial": ...}`` to ``$FAKE_LAUNCH_LOG``. With
``$FAKE_LAUNCH_CRASH`` set to a substring of a job's name, the first training call of that job
writes its checkpoint at step 2 and exits 1 (an interrupted run).
"""

import json
import os
import sys
import zipfile


def _args(argv):
    out = {}
    for a in argv:
        if "=" in a and not a.startswith("--"):
            k, v = a.split("=", 1)
            out[k] = json.loads(v) if v.startswith('"') else v
    return out


def main(argv):
    args = _args(argv)
    trial = os.path.join(args["exp_root_dir"], args["name"], args["tag"])
    with open(os.environ["FAKE_LAUNCH_LOG"], "a") as f:
        f.write(json.dumps({"argv": argv, "trial": trial}) + "\n")
    if "--train" in argv:
        if os.path.exists(trial) and "resume" not in args:
            print(f"error: {trial} exists and this is not a resume", file=sys.stderr)
            return 1
        os.makedirs(os.path.join(trial, "ckpts"), exist_ok=True)
        os.makedirs(os.path.join(trial, "configs"), exist_ok=True)
        with open(os.path.join(trial, "configs", "parsed.yaml"), "w") as f:
            f.write(f"seed: {args.get('seed', 0)}\n")
        crash = os.environ.get("FAKE_LAUNCH_CRASH")
        flag = os.path.join(trial, "..", "crashed-once")
        step = 4
        if crash and crash in args["name"] and not os.path.exists(flag):
            open(flag, "w").close()
            step = 2
        start = 0
        if "resume" in args:
            with zipfile.ZipFile(args["resume"]) as z:
                start = int(z.read("step"))
        # like Lightning's ModelCheckpoint after resuming from a last.ckpt it did not write
        name = "last-v1.ckpt" if "resume" in args else "last.ckpt"
        with zipfile.ZipFile(os.path.join(trial, "ckpts", name), "w") as z:
            z.writestr("step", str(step))
            z.writestr("start", str(start))
        print(f"trained {start}->{step}")
        return 1 if step < 4 else 0
    if "--test" in argv:
        import imageio.v3 as iio
        import numpy as np

        with zipfile.ZipFile(args["resume"]) as z:
            step = int(z.read("step"))
        seed = int(
            open(os.path.join(os.path.dirname(os.path.dirname(args["resume"])), "configs", "parsed.yaml"))
            .read()
            .split(":")[1]
        )
        n = int(args.get("data.n_test_views", 3))
        res = int(args.get("data.eval_width", 16))
        views = os.path.join(trial, "save", f"it{step}-test-rgb")
        os.makedirs(views, exist_ok=True)
        for i in range(n):
            img = np.full((res, res, 3), 40 * (seed + 1) + 10 * i, dtype=np.uint8)
            iio.imwrite(os.path.join(views, f"{i}.png"), img)
        with open(os.path.join(trial, "save", "metrics.csv"), "w") as f:
            f.write(f"step,split,name,value\n{step},test,psnr,{20 + seed}\n{step},test,reward,0.5\n")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
