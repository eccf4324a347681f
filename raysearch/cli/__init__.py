"""The command lines: `raysearch SUB` (`main`), the stage scripts (`stage_main`); the flags they
share and their checks in `options`, what each subcommand does in `commands`."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is first imported

from raysearch.cli.main import build_parser, main  # noqa: E402
from raysearch.cli.options import search_options, spec_from_args  # noqa: E402
from raysearch.cli.stage import build_stage_parser, stage_main  # noqa: E402

__all__ = ["build_parser", "build_stage_parser", "main", "search_options", "spec_from_args", "stage_main"]
