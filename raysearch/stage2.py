"""Stage 2 of the study as a search; `python raysearch/stage2.py --help` lists every option."""

import os
import sys

if __name__ == "__main__" and __package__ in (None, ""):
    # run as a script (`python raysearch/stage2.py`, `ray job submit ... -- python raysearch/stage2.py`):
    # import the package from the repository, not this folder's modules as top-level ones
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, os.path.dirname(here))

from raysearch.cli import stage_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(2))
