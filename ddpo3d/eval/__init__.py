"""Score finished runs over their saved renders and print the tables papers report."""

from ddpo3d.eval.score import find_views, load_views, read_run_prompt, score_runs  # noqa: F401
