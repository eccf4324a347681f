"""Ray's local start-up (`raysearch.search.runtime`): a node that never comes up is started again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO

# The first raylet Ray launches never starts (it sleeps, as the one seen in CI never wrote a line);
# the second is Ray's own. The script prints the pid of the stuck one and whether it is still alive.
SCRIPT = textwrap.dedent("""
    import logging, os, sys
    import ray
    import ray._private.services as services
    from raysearch.search.runtime import init_ray

    mark, real = sys.argv[1], services.RAYLET_EXECUTABLE
    fake = os.path.join(os.path.dirname(mark), "raylet")
    with open(fake, "w") as f:
        f.write(f"#!/bin/sh\\nif [ ! -e {mark} ]; then echo $$ > {mark}; exec sleep 600; fi\\nexec {real} \\"$@\\"\\n")
    os.chmod(fake, 0o755)
    services.RAYLET_EXECUTABLE = fake
    logging.basicConfig(level=logging.WARNING)
    init_ray(None)
    print("cpus", ray.cluster_resources().get("CPU"))
    stuck = int(open(mark).read())
    try:
        os.kill(stuck, 0)
        print("stuck alive")
    except ProcessLookupError:
        print("stuck gone")
    ray.shutdown()
""")


@pytest.mark.slow
def test_a_node_that_never_starts_is_started_again(tmp_path):
    script = tmp_path / "start.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "first")], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "first").exists()  # the first start really went through the stuck raylet
    assert "did not start" in p.stderr and "attempt 2 of 3" in p.stderr
    assert "cpus " in p.stdout and "stuck gone" in p.stdout  # the second start works; nothing is left behind
