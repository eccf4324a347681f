"""`python -m raysearch.cli ...` is `raysearch ...`."""

import sys

from raysearch.cli.main import main

sys.exit(main())
