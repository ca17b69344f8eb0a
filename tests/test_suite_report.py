"""The suite's comparison page (``python -m ddpo3d.suite report``): its HTML from a small suite, the
placeholders of jobs without media, plain trial folders, bad inputs, and the page in headless
Chromium (media load, sorting, hiding configs; screenshots).

The suite is run with ``tests/suite_fake_launch.py`` (launch.py's command line, no training) and
its folders are then given what a toy run writes besides: the training curves in
``trial/save/metrics.csv``, the test grids (render | true object | opacity) and the turntable
``it<step>-test.mp4`` made from them exactly as the runtime's ``save_img_sequence`` does. One slow
test builds the page from a real toy suite.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import time

import numpy as np
import pytest

from ddpo3d.suite import report as rp
from ddpo3d.suite.__main__ import main as suite_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = os.path.join(ROOT, "tests", "suite_fake_launch.py")
TOY = [os.path.join(ROOT, "configs", "toy", "sds.yaml"), os.path.join(ROOT, "configs", "toy", "ddpo-brightness.yaml")]
PROMPTS = ["a red sphere", "a blue cube", "a green torus"]
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 170, 60)}
#: where the browser test saves its screenshots (default: its tmp_path; the path is printed)
SHOTS = os.environ.get("DDPO3D_REPORT_SHOTS")


def _frame(prompt: str, i: int, n: int, size: int, tint: float) -> np.ndarray:
    """A disc of the prompt's colour moving around the centre (view ``i`` of ``n``)."""
    colour = np.array(COLOURS[prompt.split()[1]], dtype=np.float32) * tint
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx = size / 2 + size * 0.12 * np.cos(2 * np.pi * i / n)
    r = size * (0.28 + 0.04 * np.sin(2 * np.pi * i / n))
    inside = ((xx - cx) ** 2 + (yy - size / 2) ** 2) < r**2
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    img[inside] = np.clip(colour, 0, 255).astype(np.uint8)
    return img


def _toy_media(job_dir: str, prompt: str, tint: float, step: int = 4, views: int = 8, size: int = 32) -> float:
    """What a toy run's render writes: grids (render | true object | opacity), RGB views, turntable.

    Returns:
        The renders' brightness (mean of the RGB views in [0, 1]).
    """
    import imageio

    save = os.path.join(job_dir, f"eval-{_key(job_dir)}", "save")
    grid_dir = os.path.join(save, f"it{step}-test")
    rgb_dir = os.path.join(save, f"it{step}-test-rgb")
    shutil.rmtree(rgb_dir, ignore_errors=True)
    os.makedirs(grid_dir, exist_ok=True)
    os.makedirs(rgb_dir, exist_ok=True)
    frames = []
    for i in range(views):
        render = _frame(prompt, i, views, size, tint)
        truth = _frame(prompt, i, views, size, 1.0)
        opacity = np.repeat((255 - render.min(-1, keepdims=True)).clip(0, 255), 3, -1).astype(np.uint8)
        grid = np.concatenate([render, truth, opacity], axis=1)
        imageio.imwrite(os.path.join(grid_dir, f"{i}.png"), grid)
        imageio.imwrite(os.path.join(rgb_dir, f"{i}.png"), render)
        frames.append(grid)
    imageio.mimsave(os.path.join(save, f"it{step}-test.mp4"), frames, fps=30, macro_block_size=1)
    return float(np.mean([f[:, :size] for f in frames]) / 255.0)


def _key(job_dir: str) -> str:
    return json.load(open(os.path.join(os.path.dirname(os.path.dirname(job_dir)), "suite.json")))["protocol_key"]


def _toy_trial(job_dir: str, config: str, prompt: str, seed: int) -> None:
    """The training run's config and curves (validation reward and fidelity every 2 steps)."""
    import yaml

    trial = os.path.join(job_dir, "trial")
    os.makedirs(os.path.join(trial, "save"), exist_ok=True)
    reward = {"type": "brightness"} if config == "ddpo" else {"type": "jpeg-compressibility"}
    objective = "ddpo3d" if config == "ddpo" else "none"
    parsed = {
        "name": os.path.basename(job_dir),
        "seed": seed,
        "system": {
            "reference": "toy",
            "prompt_processor": {"prompt": prompt},
            "guidance": {"reward": reward, "objective": {"type": objective}},
        },
    }
    with open(os.path.join(trial, "configs", "parsed.yaml"), "w") as f:
        yaml.safe_dump(parsed, f)
    rng = np.random.default_rng(len(prompt) + seed + (7 if config == "ddpo" else 0))
    with open(os.path.join(trial, "save", "metrics.csv"), "w") as f:
        f.write("step,split,name,value\n")
        for step in range(0, 5, 2):
            f.write(f"{step},val,reward,{0.7 + 0.03 * step + 0.01 * rng.standard_normal():.5f}\n")
            f.write(f"{step},val,psnr,{12 + 2.0 * step + rng.standard_normal():.4f}\n")
            f.write(f"{step},train,loss_sds,{1.0 / (step + 1):.4f}\n")


def _suite_yaml(tmp_path, prompts=PROMPTS) -> str:
    import yaml

    data = {
        "name": "toy-report",
        "configs": [TOY[0], {"path": TOY[1], "label": "ddpo"}],
        "prompts": list(prompts),
        "seeds": [0],
        "overrides": ["trainer.max_steps=4"],
        "eval": {"views": 8, "resolution": 32, "metrics": [{"name": "brightness", "type": "brightness"}, "jpeg"]},
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def make_toy_suite(tmp_path, monkeypatch, failed: bool = True, running: bool = True) -> str:
    """2 configs x 3 prompts; ``ddpo / a blue cube`` failed and ``ddpo / a green torus`` still running.

    Returns:
        The suite folder, gathered (``results.csv`` written).
    """
    from ddpo3d.suite.__main__ import prepare
    from ddpo3d.suite.runner import JobDir, write_json
    from ddpo3d.suite.spec import load_suite

    monkeypatch.setenv("DDPO3D_LAUNCH", FAKE)
    monkeypatch.setenv("FAKE_LAUNCH_LOG", str(tmp_path / "launch.jsonl"))
    if failed:
        monkeypatch.setenv("FAKE_LAUNCH_CRASH", "ddpo__a_blue_cube")
    out = str(tmp_path / "suite")
    suite_file = _suite_yaml(tmp_path)
    jobs = prepare(load_suite(suite_file), out)
    if running:
        held = next(j for j in jobs if j.job_id.startswith("ddpo__a_green_torus"))
        write_json(
            JobDir(out, held.job_id).path("RUNNING"),
            {"host": socket.gethostname(), "pid": os.getpid(), "stage": "train", "time": "2026-01-01T00:00:00+00:00"},
        )
    suite_main(["run", suite_file, "--out", out, "--executor", "debug"])
    for job in jobs:
        jd = JobDir(out, job.job_id)
        if os.path.isfile(jd.path("DONE")):
            _toy_trial(jd.root, job.config.label, job.prompt, job.seed)
            tint = 0.55 if job.config.label == "ddpo" else 0.9
            brightness = _toy_media(jd.root, job.prompt, tint=tint)
            # the fake launcher's flat grey views all score alike: give each job its renders' values
            metrics = json.load(open(jd.path("metrics.json")))
            metrics["metrics"]["brightness"]["mean"] = brightness
            metrics["metrics"]["jpeg"]["mean"] = -1.0 + 0.3 * tint - 0.01 * len(job.prompt)
            metrics["metrics"]["test/psnr"]["mean"] = 14.0 + 6.0 * tint + 0.1 * len(job.prompt)
            write_json(jd.path("metrics.json"), metrics)
    assert suite_main(["gather", out, "--no-figures"]) == 0
    return out


@pytest.fixture
def toy_suite(tmp_path, monkeypatch):
    return make_toy_suite(tmp_path, monkeypatch)


def _results(out: str) -> list:
    return list(csv.DictReader(open(os.path.join(out, "results.csv"))))


def _srcs(page: str) -> list:
    return re.findall(r'(?:src|data-fallback)="([^"]+)"', page)


# ---------------------------------------------------------------------------- HTML structure


def test_report_from_suite_has_grid_summary_curves_and_legend(toy_suite, capsys):
    assert suite_main(["report", toy_suite]) == 0
    printed = capsys.readouterr().out
    index = os.path.join(toy_suite, "report", "index.html")
    assert f"wrote {index}" in printed and "size at 110 prompts x 5 configs (550 cells" in printed
    page = open(index, encoding="utf-8").read()
    rows = _results(toy_suite)
    # one row per prompt, one column per config, plus the true object's column
    assert re.findall(r'<tr data-order="\d+" data-prompt="([^"]+)"', page) == PROMPTS
    assert re.findall(r'<th data-col="(\d)" data-config="([^"]+)"', page) == [("0", "sds"), ("1", "ddpo")]
    assert "ground truth" in page
    # every cell's values are results.csv's
    for r in rows:
        if r["state"] != "done":
            continue
        pattern = 'data-prompt="' + re.escape(r["prompt"]) + "\" data-seed=\"\" data-values='([^']+)'"
        m = re.search(pattern, page)
        values = json.loads(m.group(1).replace("&quot;", '"'))
        assert values[r["config"]]["brightness"] == pytest.approx(float(r["brightness"]), rel=1e-12)
    # the summary marks the best mean (rewards and PSNR: higher is better)
    data = rp.read_suite(toy_suite)
    table = rp.summary(data)
    best = rp.best_configs(data, table)
    done = [r for r in rows if r["state"] == "done"]
    for metric in ("brightness", "jpeg", "test/psnr"):
        means = {}
        for c in ("sds", "ddpo"):
            vals = [float(r[metric]) for r in done if r["config"] == c]
            means[c] = sum(vals) / len(vals)
        assert best[metric] == [max(means, key=means.get)]
        assert table[best[metric][0]][metric][0] == pytest.approx(max(means.values()))
    assert page.count('class="best"') == 3
    # curves: one card per config, a line per job and the mean
    assert page.count('<div class="card" data-col=') == 2
    assert page.count("<polyline") == 2 * (3 + 1) + 2 * 1  # 2 charts: sds 3 jobs + mean, ddpo 1 job
    # legend: which model and view protocol produced each metric, and each config's training reward
    assert "8 test views evenly spaced in azimuth at 32 px" in page
    assert "jpeg-compressibility (no model)" in page and "system (logged on the test split)" in page
    assert "<td>ddpo</td><td>brightness</td><td>ddpo3d</td>" in page
    # every linked file exists, relative to the page (media are linked, not copied)
    srcs = _srcs(page)
    assert srcs and all(os.path.isfile(os.path.join(os.path.dirname(index), s)) for s in srcs)
    assert not os.path.exists(os.path.join(toy_suite, "report", "media"))
    assert all(s.startswith("../jobs/") for s in srcs)


def test_missing_media_show_a_placeholder_with_the_reason(toy_suite):
    from ddpo3d.suite.runner import JobDir

    done = next(r for r in _results(toy_suite) if r["config"] == "sds" and r["prompt"] == "a green torus")
    save = os.path.join(JobDir(toy_suite, done["job_id"]).root, f"eval-{_key(JobDir(toy_suite, done['job_id']).root)}")
    shutil.rmtree(save)  # a finished job whose renders were deleted
    shutil.rmtree(os.path.join(JobDir(toy_suite, done["job_id"]).trial, "save"))
    res = rp.build_report([toy_suite])
    cells = {(c.config, c.prompt): c for c in res["data"].cells}
    assert cells[("ddpo", "a blue cube")].state == "failed"
    assert cells[("ddpo", "a blue cube")].reason.startswith("failed at train, exit 1")
    assert cells[("ddpo", "a green torus")].state == "running"
    assert "still running (train" in cells[("ddpo", "a green torus")].reason
    assert "no turntable video (it<step>-test.mp4) or test views" in cells[("sds", "a green torus")].reason
    page = open(res["index"], encoding="utf-8").read()
    assert page.count('<div class="placeholder failed"><b>failed</b>failed at train, exit 1') == 1
    assert page.count('<div class="placeholder running"><b>still running</b>') == 1
    assert page.count("<b>no render</b>no turntable video") == 1
    # the failed job links its log; no row lost its prompt
    assert 'href="../jobs/ddpo__a_blue_cube' in page and "/logs/train-1.log" in page
    # the torus row has no media at all but still shows
    assert re.findall(r'data-prompt="([^"]+)"', page)[:3] == PROMPTS


def test_video_missing_falls_back_to_the_first_test_view(toy_suite):
    from ddpo3d.suite.runner import JobDir

    job = JobDir(toy_suite, next(r["job_id"] for r in _results(toy_suite) if r["config"] == "sds"))
    save = os.path.join(job.root, f"eval-{_key(job.root)}", "save")
    os.remove(os.path.join(save, "it4-test.mp4"))
    media, step, _ = rp.find_media([save])
    assert media.kind == "image" and media.path.endswith(os.path.join("it4-test", "0.png")) and step == 4
    assert media.panels == 3 and media.panel_px == 32 and "no turntable video" in media.note
    # a video in a later folder (the training run's) beats the still image of the first one
    other = next(r["job_id"] for r in _results(toy_suite) if r["config"] == "ddpo" and r["state"] == "done")
    other_save = os.path.join(JobDir(toy_suite, other).root, f"eval-{_key(job.root)}", "save")
    shutil.copy(os.path.join(other_save, "it4-test.mp4"), os.path.join(job.trial, "save", "it4-test.mp4"))
    media, step, _ = rp.find_media([save, os.path.join(job.trial, "save")])
    assert media.kind == "video" and media.path == os.path.join(job.trial, "save", "it4-test.mp4") and step == 4


def test_plain_trial_folders(toy_suite, tmp_path, capsys):
    from ddpo3d.suite.runner import JobDir

    trials = []
    for r in _results(toy_suite):
        if r["state"] == "done":
            jd = JobDir(toy_suite, r["job_id"])
            # a plain run: its test renders in the trial's own save/
            src = os.path.join(jd.root, f"eval-{_key(jd.root)}", "save")
            for name in os.listdir(src):
                dst = os.path.join(jd.trial, "save", name)
                if not os.path.exists(dst):
                    (shutil.copytree if os.path.isdir(os.path.join(src, name)) else shutil.copy)(
                        os.path.join(src, name), dst
                    )
            with open(os.path.join(jd.trial, "save", "metrics.csv"), "a") as f:
                f.write("4,test,psnr,21.5\n4,test,reward,0.3\n")
            trials.append(jd.trial)
    out = str(tmp_path / "trials-report")
    assert suite_main(["report", *trials, "--out", out]) == 0
    data = rp.read_trials(trials)
    assert {c.prompt for c in data.cells} == {"a red sphere", "a blue cube", "a green torus"}
    assert data.metrics == ["test/psnr"]  # the config's own reward is not a shared metric
    assert all(c.metrics["test/psnr"] == 21.5 and c.media.kind == "video" for c in data.cells)
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    assert all(os.path.isfile(os.path.join(out, s)) for s in _srcs(page))
    assert "wrote" in capsys.readouterr().out


def test_bad_inputs_are_errors_naming_the_folder(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    with pytest.raises(rp.ReportError, match=f"{re.escape(missing)} does not exist"):
        rp.build_report([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(rp.ReportError, match=f"{re.escape(str(empty))} holds no suite.json"):
        rp.build_report([str(empty)])
    (tmp_path / "t" / "save").mkdir(parents=True)
    with pytest.raises(rp.ReportError, match="--out is required"):
        rp.build_report([str(tmp_path / "t")])
    with pytest.raises(rp.ReportError, match=f"{re.escape(str(empty))} is neither a suite folder"):
        rp.build_report([str(tmp_path / "t"), str(empty)], out=str(tmp_path / "r"))
    assert suite_main(["report", missing]) == 2
    assert f"error: report: {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written on a bad input


def test_copy_media_makes_the_report_folder_stand_alone(tmp_path, monkeypatch):
    out = make_toy_suite(tmp_path, monkeypatch, failed=False, running=False)
    res = rp.build_report([out], copy_media=True)
    moved = str(tmp_path / "moved-report")
    shutil.move(os.path.dirname(res["index"]), moved)
    page = open(os.path.join(moved, "index.html"), encoding="utf-8").read()
    srcs = _srcs(page)
    assert len(srcs) == 2 * 6 + 2 * 3  # video + fallback view per cell and per ground-truth cell (shared files)
    assert all(s.startswith("media/") and os.path.isfile(os.path.join(moved, s)) for s in srcs)
    assert "copied into report/media/" in page


def test_metric_directions_and_unknown_metrics_are_not_marked():
    assert rp.metric_direction("clip", reward_metric=True) == "higher"
    assert rp.metric_direction("test/psnr") == "higher" and rp.metric_direction("test/lpips") == "lower"
    assert rp.metric_direction("elapsed_s") == "lower" and rp.metric_direction("test/widgets") is None
    data = rp.ReportData(
        title="t",
        cells=[
            rp.Cell("a", "p", 0, "a0", "done", None, metrics={"x": 1.0, "loss": 2.0}),
            rp.Cell("b", "p", 0, "b0", "done", None, metrics={"x": 3.0, "loss": 1.0}),
        ],
        configs=["a", "b"],
        metrics=["x", "loss"],
        labels={"x": "x", "loss": "loss"},
        metric_info={"x": {"direction": None}, "loss": {"direction": "lower"}},
    )
    best = rp.best_configs(data, rp.summary(data))
    assert best == {"loss": ["b"]}
    page, _ = rp.render_html(data, "/tmp")
    assert "Not marked (direction unknown): x." in page and page.count('class="best"') == 1


def test_svg_chart_draws_each_series_and_notes_missing_data():
    svg = rp.svg_chart(
        [{"points": [(0, 1.0), (10, 2.0)], "colour": "#000"}, {"points": [(0, 0.5), (10, 0.7)], "colour": "#f00"}],
        "reward",
        "r",
    )
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    # x from 0 to 10 spans the plot box; the higher value is drawn higher (smaller y)
    first = re.search(r'<polyline points="([^"]+)"', svg).group(1).split()
    (x0, y0), (x1, y1) = (tuple(map(float, p.split(","))) for p in first)
    assert x0 < x1 and y1 < y0
    assert "no data" in rp.svg_chart([{"points": [], "colour": "#000"}], "fidelity", "dB")


def test_many_jobs_draw_a_band_and_seeds_get_their_own_rows():
    cells = []
    for seed in range(2):
        for i in range(7):
            curve = [(s, 0.1 * i + 0.01 * s + seed) for s in range(0, 30, 10)]
            cells.append(
                rp.Cell(
                    "a", f"p{i}", seed, f"a{i}s{seed}", "done", None, metrics={"r": float(i)}, curves={"reward": curve}
                )
            )
    series, how = rp.config_series(cells, "reward", "#000")
    assert how == "band: min-max over 14 jobs, line: their mean"
    assert series[0]["band"][0] == (0, 0.0, pytest.approx(1.6)) and len(series[1]["points"]) == 3
    few, how = rp.config_series(cells[:3], "reward", "#000")
    assert len(few) == 4 and how == "thin: each job, thick: their mean"
    data = rp.ReportData("t", cells, ["a"], ["r"], {"r": "r"}, metric_info={"r": {"direction": "higher"}})
    page, _ = rp.render_html(data, "/tmp")
    assert page.count("<polygon") == 1
    rows = re.findall(r'<tr data-order="\d+" data-prompt="([^"]+)" data-seed="(\d)"', page)
    assert len(rows) == 14 and ("p3", "1") in rows and '<span class="seed">seed 1</span>' in page


def test_read_curves_prefers_validation_reward(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("step,split,name,value\n1,train,reward_mean,0.1\n0,val,reward,0.2\n5,val,reward,0.4\n5,val,psnr,nan\n")
    assert rp.read_curves(str(p)) == {"reward": [(0, 0.2), (5, 0.4)]}
    p.write_text("step,split,name,value\n1,train,reward_mean,0.1\n2,train,reward_mean,0.3\n")
    assert rp.read_curves(str(p)) == {"reward": [(1, 0.1), (2, 0.3)]}


def test_size_estimate_renders_the_scaled_grid(toy_suite):
    data = rp.read_suite(toy_suite)
    report_dir = os.path.join(toy_suite, "report")
    size = rp.estimate_size(data, report_dir, prompts=["p1", "p2", "p3", "p4"], configs=3)
    assert size["cells"] == 12 and size["measured_cells"] == 6
    # the measured cells' media: the video of each of the 4 with media; their fallback views apart
    files = [(c.media.path, c.media.poster) for c in data.cells if c.media is not None]
    assert len(files) == 4
    per_cell = sum(os.path.getsize(a) for a, _ in files) / 4
    assert size["media_per_cell"] == pytest.approx(per_cell) and size["media_bytes"] == pytest.approx(12 * per_cell)
    assert size["fallback_per_cell"] == pytest.approx(sum(os.path.getsize(b) for _, b in files) / 4)
    # the HTML is that of the rendered 4 x 3 grid: more cells, more bytes, linearly
    bigger = rp.estimate_size(data, report_dir, prompts=8, configs=3)
    assert bigger["html_bytes"] > size["html_bytes"] > size["measured_html_bytes"]
    assert size["html_per_cell"] > 300
    assert rp.gpteval3d_prompts() is not None and len(rp.gpteval3d_prompts()) == 110


# ---------------------------------------------------------------------------- in a browser


def _browser():
    """Headless Debian chromium through its chromedriver, or a skip naming what is missing."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; it is in the [dev] extra)")
    binary = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    driver = os.environ.get("DDPO3D_CHROMEDRIVER") or shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip(
            "no headless browser: needs Debian's chromium and chromedriver on PATH "
            "(apt-get install chromium chromium-driver); .ci/run installs them"
        )
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never download a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1500,1000",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def _wait(driver, script: str, timeout: float = 20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    return driver.execute_script(script)


MEDIA_STATE = """
return {
  errors: window.__mediaErrors,
  videos: Array.from(document.querySelectorAll('video')).map(v => ({src: v.getAttribute('src'), ready: v.readyState,
          duration: v.duration, width: v.videoWidth})),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth})),
};
"""


def check_page_in_browser(index: str, out_dir: str, expected_order, hide_config: str) -> dict:
    """Load ``index`` headless; assert media, sorting and hiding; save screenshots. Returns the media state."""
    from selenium.webdriver.common.by import By

    driver = _browser()
    try:
        driver.get("file://" + index)
        _wait(driver, "return Array.from(document.querySelectorAll('video')).every(v => v.readyState >= 2)")
        state = driver.execute_script(MEDIA_STATE)
        assert state["errors"] == []
        assert state["videos"], "the page shows no video"
        for v in state["videos"]:  # decoded: a duration and a frame
            assert v["duration"] > 0 and v["ready"] >= 2 and v["width"] > 0, v
        for img in state["images"]:
            assert img["complete"] and img["width"] > 0, img
        failed = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert failed == [], failed  # no failed request (a 404 is logged as SEVERE)

        # full page, then one cell enlarged
        os.makedirs(out_dir, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        driver.set_window_size(max(1500, width), height + 120)
        time.sleep(0.5)
        full = os.path.join(out_dir, "full.png")
        driver.save_screenshot(full)
        driver.execute_script("document.documentElement.style.setProperty('--cell', '420px')")
        time.sleep(0.5)
        cell = os.path.join(out_dir, "cell.png")
        driver.find_elements(By.CSS_SELECTOR, "td[data-job]")[0].screenshot(cell)
        driver.execute_script("document.documentElement.style.setProperty('--cell', '220px')")
        print(f"screenshots: {full} {cell}")

        # clicking a metric under a config reorders the rows: best first, again to reverse
        config, metric, valued, empty = expected_order
        button = driver.find_element(By.CSS_SELECTOR, f'button.sort[data-config="{config}"][data-metric="{metric}"]')
        rows = "return Array.from(document.querySelectorAll('#grid > tbody > tr')).map(r => r.dataset.prompt)"
        before = driver.execute_script(rows)
        driver.execute_script("arguments[0].click()", button)
        assert driver.execute_script(rows) == valued + empty
        driver.execute_script("arguments[0].click()", button)
        assert driver.execute_script(rows) == valued[::-1] + empty  # reversed; no value stays last
        if len(valued) > 1:
            assert valued + empty != before or valued[::-1] + empty != before

        # hiding a config hides its column (header and cells) and leaves the others
        box = driver.find_element(By.CSS_SELECTOR, f'input.cfg-toggle[data-config="{hide_config}"]')
        driver.execute_script("arguments[0].click()", box)
        col = box.get_attribute("data-col")
        hidden = driver.execute_script(
            "return Array.from(document.querySelectorAll('#grid [data-col=\"' + arguments[0] + '\"]'))"
            ".map(e => e.offsetParent === null)",
            col,
        )
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#grid td[data-col]:not([data-col=\"' + arguments[0] + '\"])'))"
            ".map(e => e.offsetParent !== null)",
            col,
        )
        assert hidden and all(hidden) and shown and all(shown)

        # the summary table sorts its configs by a clicked header (best first)
        th = driver.find_element(By.XPATH, f'//table[@id="summary"]/thead/tr/th[starts-with(., "{metric} (")]')
        driver.execute_script("arguments[0].click()", th)
        got = driver.execute_script(
            "return Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.cells[0].textContent)"
        )
        means = {}
        for r in _results(os.path.dirname(os.path.dirname(index))):
            if r[metric] != "":
                means.setdefault(r["config"], []).append(float(r[metric]))
        ranked = sorted(means, key=lambda c: -sum(means[c]) / len(means[c]))
        assert got[: len(ranked)] == ranked
        driver.execute_script("arguments[0].click()", th)  # again: worst first
        got = driver.execute_script(
            "return Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.cells[0].textContent)"
        )
        assert got[: len(ranked)] == ranked[::-1]
        return state
    finally:
        driver.quit()


def _expected_order(out: str, config: str, metric: str) -> tuple:
    """``(config, metric, prompts with a value sorted best (highest) first, prompts without one)`` from results.csv."""
    rows = [r for r in _results(out) if r["config"] == config]
    valued = sorted((r for r in rows if r[metric] != ""), key=lambda r: -float(r[metric]))
    return config, metric, [r["prompt"] for r in valued], [r["prompt"] for r in rows if r[metric] == ""]


@pytest.mark.slow  # about 12 s on 2 busy cores: two browser starts
def test_report_in_headless_chromium(toy_suite, tmp_path):
    res = rp.build_report([toy_suite])
    expected = _expected_order(toy_suite, "ddpo", "brightness")
    assert len(expected[2]) == 1 and len(expected[3]) == 2  # one scored, one failed, one running
    shots = SHOTS or str(tmp_path / "shots")
    state = check_page_in_browser(res["index"], shots, _expected_order(toy_suite, "sds", "brightness"), "ddpo")
    # every cell with media on disk is on the page: 4 done jobs + 3 ground-truth cells
    assert len(state["videos"]) == 4 + 3
    # the check sees a missing file: the cell (and the true object's cell using the same video) fall back
    video = re.search(r'<video src="([^"]+)"', open(res["index"], encoding="utf-8").read()).group(1)
    os.remove(os.path.join(os.path.dirname(res["index"]), video))
    driver = _browser()
    try:
        driver.get("file://" + res["index"])
        errors = _wait(driver, "return window.__mediaErrors.length ? window.__mediaErrors : null")
        assert errors and set(errors) == {video}
        assert any("ERR_FILE_NOT_FOUND" in e["message"] for e in driver.get_log("browser"))
        notes = driver.execute_script("return Array.from(document.querySelectorAll('.note')).map(n => n.textContent)")
        assert notes and all("could not load or play" in n for n in notes)
    finally:
        driver.quit()


@pytest.mark.slow
def test_report_from_a_real_toy_suite(tmp_path):
    """2 configs x 1 prompt of the real toy world (a few steps), then the page (and the browser when present)."""
    import yaml

    suite = tmp_path / "suite.yaml"
    over = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0"]
    over += ["trainer.enable_progress_bar=false", "data.n_val_views=1", "data.width=16", "data.height=16"]
    over += ["system.renderer.num_samples_per_ray=16", "checkpoint.every_n_train_steps=4"]
    suite.write_text(
        yaml.safe_dump(
            {
                "configs": [TOY[0], {"path": TOY[1], "label": "ddpo"}],
                "prompts": ["a red sphere"],
                "seeds": [0],
                "overrides": over,
                "eval": {"views": 4, "resolution": 32, "metrics": [{"name": "brightness", "type": "brightness"}]},
            }
        )
    )
    out = str(tmp_path / "out")
    assert suite_main(["run", str(suite), "--out", out, "--executor", "debug"]) == 0
    assert suite_main(["gather", out, "--no-figures"]) == 0
    res = rp.build_report([out])
    data = res["data"]
    assert [c.state for c in data.cells] == ["done", "done"]
    assert all(c.media.kind == "video" and c.media.panels == 3 and c.reference_panel == 1 for c in data.cells)
    assert all(c.curves.get("reward") and c.curves.get("fidelity") for c in data.cells)
    page = open(res["index"], encoding="utf-8").read()
    assert all(os.path.isfile(os.path.join(os.path.dirname(res["index"]), s)) for s in _srcs(page))
    try:
        driver = _browser()
    except pytest.skip.Exception:
        return
    driver.quit()
    check_page_in_browser(res["index"], str(tmp_path / "shots"), _expected_order(out, "sds", "brightness"), "ddpo")
