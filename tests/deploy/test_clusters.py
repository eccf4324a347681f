"""clusters/: the Ray cluster launcher configs, checked with Ray's own validation, and the Pi set-up
script, checked through its dry run. Nothing here starts a cluster, touches the network or changes
the machine."""

from __future__ import annotations

import copy
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers import REPO

CLUSTERS = REPO / "clusters"
ONPREM, CLOUD = CLUSTERS / "ray-onprem.yaml", CLUSTERS / "ray-cloud.yaml"
CONFIGS = [ONPREM, CLOUD]
SETUP = CLUSTERS / "setup_pi.sh"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())  # what `ray up` does with the file


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def ray_validate(raw: dict) -> dict:
    """Ray's schema on the file as written (ray/autoscaler/ray-schema.json: a wrong type would
    otherwise crash Ray's merging with a TypeError), then the checks `ray up` runs before it talks
    to any cloud (`_bootstrap_config` in ray.autoscaler._private.commands): `prepare_config`
    (merge the provider's defaults.yaml, the local provider's node type, min/max workers per type)
    and `validate_config` (the same schema on the completed config, then Ray's cross-field checks)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(raw, ray_schema())
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


# --- Ray cluster launcher configs ------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_passes_rays_own_validation(path):
    prepared = ray_validate(load(path))
    assert prepared["cluster_name"].startswith("raysearch")


def test_onprem_config_bootstraps_like_ray_up():
    """The local provider needs no cloud: run `ray up`'s whole config bootstrap on it."""
    from ray.autoscaler._private.commands import _bootstrap_config

    cfg = _bootstrap_config(load(ONPREM), no_config_cache=True)
    assert cfg["provider"]["type"] == "local"
    (node_type,) = cfg["available_node_types"].values()
    n = len(cfg["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n >= 1  # every GPU host joins


def test_cloud_config_has_an_autoscaling_gpu_worker_type():
    raw = load(CLOUD)
    cfg = ray_validate(raw)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu = [t for name, t in types.items() if name != cfg["head_node_type"]]
    assert len(gpu) == 1
    (gpu,) = gpu
    # Declared resources: the autoscaler knows this type has a GPU before any node of it exists,
    # so a trial's GPU request scales it up.
    assert isinstance(gpu["resources"]["GPU"], int) and gpu["resources"]["GPU"] >= 1
    assert gpu["resources"]["CPU"] >= 1
    assert 0 <= gpu["min_workers"] < gpu["max_workers"] <= cfg["max_workers"]
    assert "boto3" in " ".join(cfg["head_setup_commands"])  # the head's autoscaler launches EC2 nodes


def _install_line(cfg: dict) -> str:
    (line,) = [c for c in cfg["setup_commands"] if "[search]" in c]
    return line


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_installs_the_project_like_the_pis(path):
    cfg = ray_validate(load(path))
    torch_pin = re.search(r"pip install -q (torch==[\d.]+)", (REPO / "scripts" / "setup.sh").read_text()).group(1)
    for cmds in (cfg["head_setup_commands"], cfg["worker_setup_commands"]):  # after Ray's merge
        assert f"pip install {torch_pin}" in cmds[0], "torch first, pinned as scripts/setup.sh pins it"
    line = _install_line(cfg)
    assert '"$HOME/raysearch[search]"' in line  # from the synced source, not PyPI's "raysearch"
    assert re.search(r'"ray\[default,tune\]==\d+\.\d+\.\d+"', line)
    # protobuf / grpcio exactly as pyproject.toml pins them (what the Pis get)
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [d for d in deps if d.startswith(("protobuf", "grpcio"))]
    assert any(d.startswith("protobuf") for d in pins) and any(d.startswith("grpcio>=") for d in pins)
    for pin in pins:
        assert f'"{pin}"' in line, pin
    # what that install reads is synced: pyproject.toml, its readme, the packages
    mounts = cfg["file_mounts"]
    assert {"./pyproject.toml", "./README.md", "./raysearch", "./benchd"} <= set(mounts.values())
    for remote, local in mounts.items():
        if local.startswith("./"):
            assert (REPO / local).exists(), local
            assert remote == "~/raysearch/" + local[2:]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_ray_without_usage_stats_and_with_token_auth(path):
    cfg = ray_validate(load(path))
    for cmds in (cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_USAGE_STATS_ENABLED=0" in c and "RAY_AUTH_MODE=token" in c for c in start)
    # `ray job stop` SIGKILLs after this long: a search needs more than Ray's 3 s to close its runs
    assert all("RAY_JOB_STOP_WAIT_TIME_S=60" in c for c in cfg["head_start_ray_commands"] if "ray start" in c)
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_both_configs_set_nodes_up_the_same_way():
    a, b = load(ONPREM), load(CLOUD)
    assert a["setup_commands"] == b["setup_commands"]
    assert a["file_mounts"] == b["file_mounts"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_job_submit_example_uses_real_stage_options(path):
    text = path.read_text()
    lines = [ln.lstrip("# ").rstrip(" \\") for ln in text.splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if "ray job submit --" in ln)
    cmd = " ".join(lines[start:start + 3])
    assert cmd.startswith("RAY_AUTH_MODE=token ray job submit") and "-- python raysearch/stage" in cmd
    m = re.search(r"raysearch/(stage\d)\.py", cmd)
    assert (REPO / "raysearch" / f"{m.group(1)}.py").is_file()
    from raysearch.cli import build_stage_parser

    stage_opts = {o for a in build_stage_parser(int(m.group(1)[5:]))._actions for o in a.option_strings}
    used = set(re.findall(r"\s(--[a-z-]+)", cmd.split(" -- python ", 1)[1]))
    assert "--gpus-per-trial" in used and used <= stage_opts, used - stage_opts


def _set(cfg: dict, dotted: str, value) -> dict:
    cfg = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    return cfg


@pytest.mark.parametrize("path,key,value,error", [
    (CLOUD, "max_workers", "four", jsonschema.ValidationError),
    (CLOUD, "available_node_types.gpu.resources.GPU", "1", jsonschema.ValidationError),
    (CLOUD, "available_node_types.gpu.resources.GPU", 0.5, jsonschema.ValidationError),
    (CLOUD, "setup_commands", "pip install torch==2.13.0", jsonschema.ValidationError),
    (CLOUD, "setup_command", ["a typo'd key"], jsonschema.ValidationError),
    (CLOUD, "head_node_type", "no-such-type", ValueError),
    (CLOUD, "available_node_types.gpu.min_workers", 99, ValueError),
    (ONPREM, "provider.worker_ips", "10.0.0.21", jsonschema.ValidationError),
    (ONPREM, "auth.ssh_user", 1000, jsonschema.ValidationError),
    (ONPREM, "idle_timeout_minutes", "5m", jsonschema.ValidationError),
], ids=lambda v: v.name if isinstance(v, Path) else None)
def test_a_broken_config_fails_rays_validation(path, key, value, error):
    broken = _set(load(path), key, value)
    with pytest.raises(error):
        ray_validate(broken)


# --- the Pi set-up script --------------------------------------------------------------------

ARGS = ["--port", "50099", "--metrics-port", "9599", "--device-name", "pi-test", "--device-class", "rpi5",
        "--repo", str(REPO)]
WATCHED = [Path("/opt/benchd"), Path("/etc/benchd"), Path("/etc/systemd/system/benchd.service")]
# Everything the script could change the machine with; in a dry run none of them may be called.
MUTATORS = ["useradd", "groupadd", "usermod", "install", "cp", "rm", "mkdir", "chmod", "chown", "sed", "tee",
            "mv", "ln", "systemctl", "pip", "pip3"]


def _machine_state() -> dict:
    state = {str(p): (p.exists(), p.stat().st_mtime_ns if p.exists() else None) for p in WATCHED}
    try:
        state["user benchd"] = pwd.getpwnam("benchd").pw_uid
    except KeyError:
        state["user benchd"] = None
    return state


def _dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the dry run with every mutating command shadowed by a stub that records its call."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "called.log"
    for name in MUTATORS:
        stub = stubs / name
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> {shlex.quote(str(log))}\nexit 1\n')
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    p = subprocess.run(["bash", str(SETUP), "--dry-run", *args], capture_output=True, text=True, env=env,
                       timeout=30, check=False)
    assert not log.exists(), f"the dry run ran: {log.read_text()}"
    return p


def test_setup_script_parses():
    p = subprocess.run(["bash", "-n", str(SETUP)], capture_output=True, text=True, check=False)
    assert p.returncode == 0, p.stderr


def test_setup_script_help():
    p = subprocess.run(["bash", str(SETUP), "--help"], capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 0
    for opt in ("--dry-run", "--repo", "--port", "--device-name", "--device-class", "--help"):
        assert opt in p.stdout


def test_setup_dry_run_plans_every_step_and_changes_nothing(tmp_path):
    before = _machine_state()
    p = _dry_run(tmp_path, *ARGS)
    assert p.returncode == 0, p.stderr
    assert _machine_state() == before
    assert not Path("/opt/benchd").exists() or before[str(Path("/opt/benchd"))][0]

    lines = p.stdout.splitlines()
    cmds = [ln for ln in lines if ln and not ln.startswith("#")]

    def index(pattern: str) -> int:
        hits = [i for i, c in enumerate(cmds) if re.search(pattern, c)]
        assert hits, f"no planned command matches {pattern!r}:\n" + "\n".join(cmds)
        return hits[0]

    # user benchd in group video
    if before["user benchd"] is None:
        user = cmds[index(r"^useradd ")]
        assert "--system" in user and "--groups video" in user and user.endswith(" benchd")
    # venv in /opt/benchd, benchd installed without extras (no torch, no ray)
    if not Path("/opt/benchd/venv/bin/python").exists():
        index(r"^python3 -m venv /opt/benchd/venv$")
    pip = cmds[index(r"^/opt/benchd/venv/bin/pip install ")]
    assert pip.endswith(" /opt/benchd/src") and "[" not in pip and "torch" not in pip
    assert str(REPO / "benchd") in cmds[index(r"^cp -r ")]
    # governor (or a note that this machine has none)
    assert "scaling_governor" in p.stdout or "no cpufreq governor" in p.stdout
    # token: generated only where absent, then root:benchd 0640
    token_new = [c for c in cmds if c.endswith("> /etc/benchd/token")]
    assert len(token_new) == (0 if Path("/etc/benchd/token").exists() else 1)
    if token_new:
        assert "umask 077" in token_new[0] and "secrets.token_hex" in token_new[0]
    chown, chmod = index(r"^chown root:benchd /etc/benchd/token$"), index(r"^chmod 0640 /etc/benchd/token$")
    # unit installed, then enabled, then (re)started
    unit = index(r"> /etc/systemd/system/benchd\.service$")
    enable, restart = index(r"^systemctl enable benchd$"), index(r"^systemctl restart benchd$")
    assert index(r"^/opt/benchd/venv/bin/pip ") < unit < index(r"^systemctl daemon-reload$") < enable < restart
    assert max(chown, chmod) < restart

    # the planned unit, rendered for real (into tmp_path): the options land in ExecStart, and
    # nothing else of clusters/benchd.service changes
    rendered = tmp_path / "benchd.service"
    render = cmds[unit].rsplit(">", 1)[0] + f"> {shlex.quote(str(rendered))}"
    subprocess.run(["bash", "-c", render], check=True, timeout=30)
    text = rendered.read_text()
    for opt in ("--port 50099", "--device-name pi-test", "--device-class rpi5", "--metrics-port 9599",
                "--token-file /etc/benchd/token"):
        assert opt in text, opt
    src = (CLUSTERS / "benchd.service").read_text().splitlines()
    changed = [(a, b) for a, b in zip(src, text.splitlines()) if a != b]
    assert len(text.splitlines()) == len(src) and len(changed) == 3  # port, name+class, metrics lines


def test_setup_dry_run_twice_plans_the_same(tmp_path):
    first = _dry_run(tmp_path, *ARGS)
    second = _dry_run(tmp_path, *ARGS)
    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_setup_defaults_keep_the_unit_as_shipped(tmp_path):
    p = _dry_run(tmp_path)
    assert p.returncode == 0, p.stderr
    assert "--device-name %H " in p.stdout and "--device-class rpi4 " in p.stdout and "/opt/benchd/src" in p.stdout


@pytest.mark.parametrize("args,message", [
    (["--port", "70000"], "--port"),
    (["--port"], "needs a value"),
    (["--device-name", "pi 4"], "--device-name"),
    (["--device-class", "rpi4;reboot"], "--device-class"),
    (["--repo", "/nonexistent"], "--repo"),
    (["--repo", "/"], "not the raysearch repository"),
    (["--frobnicate"], "unknown option"),
])
def test_setup_rejects_bad_options(tmp_path, args, message):
    p = _dry_run(tmp_path, *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr


def test_setup_real_run_needs_root():
    cmd = ["bash", str(SETUP), *ARGS]
    if os.geteuid() == 0:  # never run it for real as root here: as user nobody instead
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: a real run would change this machine")
        nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        if subprocess.run([*nobody, "test", "-r", str(SETUP)], timeout=30, check=False).returncode != 0:
            pytest.skip("user nobody cannot read the checkout")
        cmd = [*nobody, *cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 2 and "run as root" in p.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
