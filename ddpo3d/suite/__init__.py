"""Prompt suites at scale: (config × prompt × seed) grids run resumably on submitit
(``local``: one worker per GPU; ``slurm``: an array; ``debug``: in-process), scored with one
evaluation protocol, gathered into one comparison table and shown side by side on one HTML page.

    python -m ddpo3d.suite run configs/suites/toy.yaml --out suites/toy
    python -m ddpo3d.suite status suites/toy
    python -m ddpo3d.suite gather suites/toy [--by-prompt]
    python -m ddpo3d.suite report suites/toy    (suites/toy/report/index.html: the comparison page)
"""

from ddpo3d.suite.spec import EvalProtocol, Job, Suite, load_suite, parse_suite  # noqa: F401
