"""Prompt suites at scale: (config × prompt × seed) grids run resumably on submitit
(``local``: one worker per GPU; ``slurm``: an array; ``debug``: in-process), scored with one
evaluation protocol and gathered into one comparison table.

    python -m ddpo3d.suite run configs/suites/toy.yaml --out suites/toy
    python -m ddpo3d.suite status suites/toy
    python -m ddpo3d.suite gather suites/toy [--by-prompt]
"""

from ddpo3d.suite.spec import EvalProtocol, Job, Suite, load_suite, parse_suite  # noqa: F401
