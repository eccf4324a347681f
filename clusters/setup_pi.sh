#!/usr/bin/env bash
# Set up a Raspberry Pi (Raspberry Pi OS 64-bit) as a benchd device of the benchmark farm:
# the steps of the README's "Set up a Raspberry Pi", as one idempotent script. Run it again at
# any time (after a `git pull`, or to change the port / name / class): it only creates what is
# missing, never replaces an existing token, and reinstalls benchd and the unit.
#
#   sudo bash clusters/setup_pi.sh [--device-class rpi4] [--port 50051] ...
#   bash clusters/setup_pi.sh --dry-run ...    # print every command; change nothing; no root needed
#   bash clusters/setup_pi.sh --no-systemd ... # in a chroot (clusters/pi_root.sh): no systemd, no governor
#
# See --help. What it does: user `benchd` (group video, for vcgencmd), /opt/benchd/venv with
# `pip install` of this repository (benchd only: no torch, no ray), CPU governor `performance`,
# a token in /etc/benchd/token (root:benchd, 0640; generated only if absent), and the systemd
# unit clusters/benchd.service installed, enabled and (re)started.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

REPO=$(dirname "$HERE")
PORT=50051
METRICS_PORT=9464
DEVICE_NAME=%H          # systemd's %H: the host name
DEVICE_CLASS=rpi4
PYTHON=python3
DRY_RUN=0
START=1
SYSTEMD=1

# Fixed by clusters/benchd.service (User=, ExecStart=, --token-file).
SVC_USER=benchd
PREFIX=/opt/benchd
VENV=$PREFIX/venv
SRC=$PREFIX/src
ETC=/etc/benchd
TOKEN=$ETC/token
UNIT_DST=/etc/systemd/system/benchd.service

usage() {
  cat <<EOF
Usage: sudo bash $PROG [options]
       bash $PROG --dry-run [options]

Set up this Raspberry Pi as a benchd device (idempotent: safe to run again).

Options:
  --repo DIR            the raysearch repository to install benchd from, and whose
                        clusters/benchd.service is installed (default: $REPO)
  --port N              benchd's gRPC port (default: $PORT)
  --metrics-port N      Prometheus metrics port (default: $METRICS_PORT)
  --device-name NAME    the name results are tagged with (default: %H, the host name);
                        letters, digits, '.', '_' and '-'
  --device-class CLASS  the device class searches ask for (default: $DEVICE_CLASS)
  --python PY           the Python that creates the venv, >= 3.10 (default: $PYTHON)
  --no-start            install and enable the service, but do not (re)start it now
  --no-systemd          for a root without systemd (a chroot, e.g. clusters/pi_root.sh's
                        emulated Pi): skip the CPU governor and systemctl (the unit file is
                        still written, but neither enabled nor started); the rest is the same
  --dry-run             print every command instead of running it; changes nothing
  -h, --help            show this help

Afterwards: copy /etc/benchd/token to the machines that submit benchmarks
(~/.config/benchd/token, mode 600), open the port to them only, and add the device to
clusters/farm.yaml.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

while (($#)); do
  opt=$1
  case $opt in
    --*=*) val=${opt#*=}; opt=${opt%%=*}; shift; set -- "$opt" "$val" "$@" ;;
  esac
  case $opt in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --no-start) START=0; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --repo|--port|--metrics-port|--device-name|--device-class|--python)
      (($# >= 2)) || die "$opt needs a value"
      case $opt in
        --repo) REPO=$2 ;;
        --port) PORT=$2 ;;
        --metrics-port) METRICS_PORT=$2 ;;
        --device-name) DEVICE_NAME=$2 ;;
        --device-class) DEVICE_CLASS=$2 ;;
        --python) PYTHON=$2 ;;
      esac
      shift 2 ;;
    *) die "unknown option: $opt (see --help)" ;;
  esac
done

# --- checks (read only) --------------------------------------------------------------------
is_port() { [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 >= 1 && 10#$1 <= 65535)); }
is_port "$PORT" || die "--port: not a port number: $PORT"
is_port "$METRICS_PORT" || die "--metrics-port: not a port number: $METRICS_PORT"
[[ $PORT != "$METRICS_PORT" ]] || die "--port and --metrics-port are the same ($PORT)"
[[ $DEVICE_NAME == %H || $DEVICE_NAME =~ ^[A-Za-z0-9._-]+$ ]] \
  || die "--device-name: use letters, digits, '.', '_' and '-' (got: $DEVICE_NAME)"
[[ $DEVICE_CLASS =~ ^[A-Za-z0-9._-]+$ ]] \
  || die "--device-class: use letters, digits, '.', '_' and '-' (got: $DEVICE_CLASS)"
[[ -d $REPO ]] || die "--repo: no such directory: $REPO"
REPO=$(cd "$REPO" && pwd)
[[ $REPO/ != "$PREFIX"/* ]] || die "--repo: $REPO is inside $PREFIX, which this script rebuilds"
UNIT_SRC=$REPO/clusters/benchd.service
for f in pyproject.toml README.md benchd/__init__.py clusters/benchd.service; do
  [[ -f $REPO/$f ]] || die "--repo: $REPO is not the raysearch repository (no $f)"
done
command -v "$PYTHON" > /dev/null || die "--python: $PYTHON not found (sudo apt install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || die "--python: $PYTHON is $("$PYTHON" -V 2>&1), benchd needs Python >= 3.10"

ARCH=$(uname -m)
case $ARCH in
  aarch64|x86_64) ;;
  armv6l|armv7l|armhf)
    msg="this is a 32-bit OS ($ARCH): onnxruntime has no wheels for it; flash Raspberry Pi OS 64-bit"
    ((DRY_RUN)) && printf '# warning: %s\n' "$msg" || die "$msg" ;;
  *) printf '# warning: untested architecture %s\n' "$ARCH" ;;
esac
if ((!DRY_RUN)); then
  ((EUID == 0)) || die "run as root: sudo bash $0 ... (or --dry-run to see the plan)"
  if ((SYSTEMD)); then
    command -v systemctl > /dev/null || die "systemd is needed (systemctl not found; in a chroot: --no-systemd)"
  fi
fi

# --- how commands run ----------------------------------------------------------------------
# Every change goes through run (a command) or run_sh (a shell line with redirections): in a
# dry run they print it, else they print it with a '+ ' and run it. Checks only read.
quote() {  # shell-quote each argument, readably: bare, 'single-quoted', or bash's %q
  local a out=() q
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a")
    elif [[ $a != *"'"* ]]; then out+=("'$a'")
    else printf -v q '%q' "$a"; out+=("$q")
    fi
  done
  printf '%s' "${out[*]}"
}
note() { if ((DRY_RUN)); then printf '# %s\n' "$*"; else printf '%s: %s\n' "$PROG" "$*"; fi; }
run() {
  if ((DRY_RUN)); then printf '%s\n' "$(quote "$@")"; else printf '+ %s\n' "$(quote "$@")"; "$@"; fi
}
run_sh() {
  if ((DRY_RUN)); then printf '%s\n' "$1"; else printf '+ %s\n' "$1"; bash -c "$1"; fi
}

if ((DRY_RUN)); then
  note "dry run: nothing is changed; these are the commands a real run would execute"
  note "(checks of what exists read this machine as $(id -un); run with sudo for an exact plan)"
fi

# --- 1. user benchd, group video (vcgencmd reads /dev/vchiq) -------------------------------
note "user $SVC_USER in group video"
getent group video > /dev/null || run groupadd --system video
if ! id -u "$SVC_USER" > /dev/null 2>&1; then
  run useradd --system --user-group --groups video --home-dir "$PREFIX" --no-create-home \
    --shell /usr/sbin/nologin "$SVC_USER"
elif ! id -nG "$SVC_USER" | tr ' ' '\n' | grep -qx video; then
  run usermod --append --groups video "$SVC_USER"
else
  note "ok: $SVC_USER exists and is in group video"
fi

# --- 2. venv in /opt/benchd with benchd (no extras: no torch, no ray) ----------------------
note "benchd in $VENV from $REPO"
run install -d -m 0755 -o root -g root "$PREFIX"
if [[ -x $VENV/bin/python ]]; then
  note "ok: $VENV exists"
else
  run "$PYTHON" -m venv "$VENV"
fi
# Installed from a root-owned copy, so that the build leaves nothing in the checkout.
run rm -rf "$SRC"
run install -d -m 0755 "$SRC"
run cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/benchd" "$REPO/raysearch" "$SRC/"
run install -m 0644 "$REPO/README.md" "$PREFIX/README.md"
run "$VENV/bin/pip" install --disable-pip-version-check --no-input "$SRC"
run "$VENV/bin/python" -c \
  'import benchd, grpc, onnxruntime as o; print("benchd installed: onnxruntime", o.__version__, "grpcio", grpc.__version__)'

# --- 3. CPU governor: performance (the unit sets it again at every start) -------------------
note "CPU governor performance"
shopt -s nullglob
governors=(/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)
shopt -u nullglob
if ((!SYSTEMD)); then
  note "skipped: --no-systemd (a chroot shares the host's CPUs: their governor is not ours to set)"
elif ((${#governors[@]} == 0)); then
  note "skipped: no cpufreq governor on this machine (not a Pi?)"
else
  for g in "${governors[@]}"; do
    if [[ $(< "$g") == performance ]]; then
      note "ok: $g is performance"
    else
      run_sh "echo performance > $(quote "$g")"
    fi
  done
fi

# --- 4. token: /etc/benchd/token, root:benchd 0640, generated only if absent ---------------
note "token $TOKEN"
run install -d -m 0750 -o root -g "$SVC_USER" "$ETC"
if [[ -s $TOKEN ]]; then
  note "ok: $TOKEN exists: kept"
else
  run_sh "umask 077 && $(quote "$PYTHON") -c 'import secrets; print(secrets.token_hex(32))' > $(quote "$TOKEN")"
fi
run chown "root:$SVC_USER" "$TOKEN"
run chmod 0640 "$TOKEN"

# --- 5. systemd unit: install, enable, (re)start ------------------------------------------
note "service benchd on port $PORT (metrics $METRICS_PORT), device $DEVICE_NAME, class $DEVICE_CLASS"
edits=(
  "s/--port 50051 /--port $PORT /"
  "s/--device-name %H /--device-name $DEVICE_NAME /"
  "s/--device-class rpi4 /--device-class $DEVICE_CLASS /"
  "s/--metrics-port 9464 /--metrics-port $METRICS_PORT /"
)
# The template must still carry the defaults the edits replace (else the options did nothing).
for e in "${edits[@]}"; do
  pat=${e#s/}; pat=${pat%%/*}
  grep -qF -- "$pat" "$UNIT_SRC" || die "$UNIT_SRC has no '$pat': update $PROG to the unit"
done
sed_args=""
for e in "${edits[@]}"; do sed_args+=" -e '$e'"; done
((SYSTEMD)) || [[ -d ${UNIT_DST%/*} ]] || run install -d -m 0755 "${UNIT_DST%/*}"
run_sh "sed$sed_args $(quote "$UNIT_SRC") > $(quote "$UNIT_DST")"
run chmod 0644 "$UNIT_DST"
if ((!SYSTEMD)); then
  note "--no-systemd: $UNIT_DST written, not enabled or started (start its ExecStart by hand)"
else
  run systemctl daemon-reload
  run systemctl enable benchd
  if ((START)); then
    run systemctl restart benchd
    run systemctl --no-pager --lines=5 status benchd
  else
    note "--no-start: not started now (it starts at boot)"
  fi
fi

name=$DEVICE_NAME
[[ $name == %H ]] && name=$(uname -n)
note "next: copy $TOKEN to the submitting machines (~/.config/benchd/token, mode 600),"
note "      allow port $PORT (and $METRICS_PORT for Prometheus) from them only, e.g."
note "      sudo ufw allow from 10.0.0.0/24 to any port $PORT proto tcp"
note "      and add to clusters/farm.yaml:"
note "        - {name: $name, address: $(uname -n).local:$PORT, class: $DEVICE_CLASS}"
note "      then: benchd farm status clusters/farm.yaml"
