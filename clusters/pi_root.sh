#!/usr/bin/env bash
# An emulated Raspberry Pi for the tests: a Debian bookworm arm64 root (what Raspberry Pi OS
# 64-bit is built on) run through qemu-user binfmt emulation, with benchd installed in it by
# clusters/setup_pi.sh itself, exactly as on a Pi (minus systemd and the CPU governor, which a
# chroot cannot have). It proves that the Pi's install works (aarch64 wheels only, no torch, no
# ray) and that benchd speaks the wire protocol from there. Its latencies are NOT Pi latencies:
# emulation is about 7x slower than a Pi 4, and unevenly so from one operator to the next.
#
#   sudo bash clusters/pi_root.sh build                 # build, finish or reuse the root (~10 min once)
#   sudo bash clusters/pi_root.sh serve                 # benchd in the root: prints pid=... port=...
#   sudo bash clusters/pi_root.sh stop PID              # stop that benchd (by its PID, never by name)
#
# See --help. The root lives outside the checkout (default /var/tmp/raysearch-pi-root, or
# $RAYSEARCH_PI_ROOT); build is idempotent: a complete root is reused, a half-built one is
# rebuilt, and benchd is reinstalled in it only when the sources it is built from changed.
set -euo pipefail

PROG=${0##*/}
PATH=$PATH:/usr/sbin:/sbin  # debootstrap, update-binfmts (a sudo PATH may lack them)
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

REPO=$(dirname "$HERE")
ROOT=${RAYSEARCH_PI_ROOT:-/var/tmp/raysearch-pi-root}
MIRROR=${RAYSEARCH_PI_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip
DEVICE_NAME=pi4-emulated
DEVICE_CLASS=rpi4-emulated
ADDRESS=127.0.0.1
PORT=0
START_TIMEOUT_S=300
STOP_TIMEOUT_S=60
LOG=""

QEMU=/usr/bin/qemu-aarch64-static
BINFMT=/proc/sys/fs/binfmt_misc
STATE=.raysearch-pi-root       # inside ROOT: markers of the finished steps
SRC_IN_ROOT=/opt/raysearch-src # inside ROOT: the clean copy of this checkout setup_pi.sh installs
VENV_IN_ROOT=/opt/benchd/venv  # inside ROOT: fixed by setup_pi.sh and clusters/benchd.service
TOKEN_IN_ROOT=/etc/benchd/token
CACHE_IN_ROOT=/var/cache/benchd
PATH_IN_ROOT=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The CPU qemu emulates: the Pi 4's, so that the root gets the Pi's instruction set (NEON, no
# SVE, no dot product) and onnxruntime picks the kernels it picks on a Pi.
QEMU_CPU_MODEL=${RAYSEARCH_PI_QEMU_CPU:-cortex-a72}

# Exit statuses of check-host (the tests skip on them, saying why).
E_MISSING_PACKAGES=3
E_NOT_POSSIBLE=4

usage() {
  cat <<EOF
Usage: sudo bash $PROG [options] COMMAND [ARGS]

An emulated Raspberry Pi (Debian $SUITE arm64 under qemu-user) with benchd installed by
clusters/setup_pi.sh, for tests of the Pi's install and of the wire protocol. Its latencies are
not Pi latencies (emulation is ~7x slower than a Pi 4, and distorted).

Commands:
  build           build the root, or reuse it if complete (a half-built one is rebuilt), then
                  install benchd in it with setup_pi.sh --no-systemd when its sources changed,
                  and check that the root's venv is aarch64 and has neither torch nor ray
  serve           start \`benchd serve\` inside the root (chroot, as user benchd, with the root's
                  /etc/benchd/token) on --address:--port; waits until it listens, then prints
                  one line: pid=PID port=PORT address=HOST:PORT token_file=FILE log=FILE
                  (the process is a session leader: PID is also its process group)
  stop PID        stop a benchd started by serve: SIGTERM, then SIGKILL to its process group
                  after --stop-timeout-s; refuses a PID that is not a benchd of this root
  exec CMD...     run a command inside the root as root (clean environment), e.g.
                  exec $VENV_IN_ROOT/bin/python -c 'import platform; print(platform.machine())'
  status          say which steps of the root are done; exit 0 if complete and current
  check-host      can this machine build and run the root? exit 0, $E_MISSING_PACKAGES (packages missing:
                  apt-get install debootstrap qemu-user-static binfmt-support) or $E_NOT_POSSIBLE
                  (not root, no binfmt_misc, no mount namespaces), with the reason on stderr
  remove          delete the root

Options:
  --root DIR              the root (default: \$RAYSEARCH_PI_ROOT or /var/tmp/raysearch-pi-root;
                          now: $ROOT)
  --repo DIR              the checkout installed into the root (default: $REPO)
  --mirror URL            Debian mirror for debootstrap (default: \$RAYSEARCH_PI_MIRROR or
                          http://deb.debian.org/debian)
  --device-name NAME      serve/build: the device name (default: $DEVICE_NAME)
  --device-class CLASS    serve/build: the device class (default: $DEVICE_CLASS)
  --address ADDR          serve: interface to bind (default: $ADDRESS, loopback)
  --port N                serve: port, 0 = any free one (default: $PORT)
  --log FILE              serve: benchd's output (default: a file in the root's /run)
  --start-timeout-s S     serve: how long to wait for benchd to listen (default: $START_TIMEOUT_S)
  --stop-timeout-s S      stop: how long SIGTERM may take before SIGKILL (default: $STOP_TIMEOUT_S)
  -h, --help              show this help

Needs root and the Debian packages debootstrap, qemu-user-static and binfmt-support; mounts
binfmt_misc and enables qemu-aarch64 if they are not. /proc and /dev are mounted into the root
only inside a private mount namespace of each command, so they go away with it (and are
unmounted on exit). qemu emulates a Cortex-A72, the Pi 4's CPU (\$RAYSEARCH_PI_QEMU_CPU
overrides it). The root takes ~550 MB; the first build 7-12 min on 2 cores (debootstrap's
emulated second stage ~5, pip ~2), later builds seconds.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 2; }

# --- arguments -----------------------------------------------------------------------------
COMMAND=""
ARGS=()
while (($#)); do
  opt=$1
  case $opt in
    --*=*) val=${opt#*=}; opt=${opt%%=*}; shift; set -- "$opt" "$val" "$@" ;;
  esac
  case $opt in
    -h|--help) usage; exit 0 ;;
    --root|--repo|--mirror|--device-name|--device-class|--address|--port|--log|--start-timeout-s|--stop-timeout-s)
      (($# >= 2)) || die "$opt needs a value"
      case $opt in
        --root) ROOT=$2 ;;
        --repo) REPO=$2 ;;
        --mirror) MIRROR=$2 ;;
        --device-name) DEVICE_NAME=$2 ;;
        --device-class) DEVICE_CLASS=$2 ;;
        --address) ADDRESS=$2 ;;
        --port) PORT=$2 ;;
        --log) LOG=$2 ;;
        --start-timeout-s) START_TIMEOUT_S=$2 ;;
        --stop-timeout-s) STOP_TIMEOUT_S=$2 ;;
      esac
      shift 2 ;;
    --) shift; ARGS+=("$@"); break ;;
    -*) die "unknown option: $opt (see --help)" ;;
    *)
      if [[ -z $COMMAND ]]; then
        COMMAND=$1; shift
        if [[ $COMMAND == exec ]]; then  # the rest is the command to run
          [[ ${1:-} == -- ]] && shift
          ARGS=("$@"); break
        fi
      else
        ARGS+=("$1"); shift
      fi ;;
  esac
done
[[ -n $COMMAND ]] || { usage >&2; exit 2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
[[ $ROOT == /* ]] || ROOT=$PWD/$ROOT
ROOT=${ROOT%/}
[[ -n $ROOT && $ROOT != / && $ROOT != /*/.. && $ROOT != /.. ]] || die "--root: refusing $ROOT"
[[ $DEVICE_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--device-name: use letters, digits, '.', '_' and '-'"
[[ $DEVICE_CLASS =~ ^[A-Za-z0-9._-]+$ ]] || die "--device-class: use letters, digits, '.', '_' and '-'"
is_uint "$PORT" && ((10#$PORT <= 65535)) || die "--port: not a port number: $PORT"
is_uint "$START_TIMEOUT_S" || die "--start-timeout-s: whole seconds"
is_uint "$STOP_TIMEOUT_S" || die "--stop-timeout-s: whole seconds"

# --- host checks ---------------------------------------------------------------------------
# check_host: 0, or E_MISSING_PACKAGES / E_NOT_POSSIBLE with the reason on stderr. It mounts
# binfmt_misc and enables qemu-aarch64 when needed (what build would do anyway).
check_host() {
  if ((EUID != 0)); then
    say "not root: debootstrap, chroot, mount and binfmt_misc need root (sudo bash $0 ...)"
    return $E_NOT_POSSIBLE
  fi
  local missing=()
  command -v debootstrap > /dev/null || missing+=(debootstrap)
  [[ -x $QEMU ]] || missing+=(qemu-user-static)
  command -v update-binfmts > /dev/null || missing+=(binfmt-support)
  if ((${#missing[@]})); then
    say "missing Debian package(s): ${missing[*]} (sudo apt-get install ${missing[*]}; scripts/system_deps.sh does it)"
    return $E_MISSING_PACKAGES
  fi
  local c
  for c in chroot unshare setsid flock mount umount findmnt tar sha256sum; do
    command -v "$c" > /dev/null || { say "no $c on this machine (util-linux / coreutils)"; return $E_NOT_POSSIBLE; }
  done
  if ! unshare --mount --propagation private true 2> /dev/null; then
    say "cannot create a mount namespace here (unshare --mount failed: an unprivileged container?)"
    return $E_NOT_POSSIBLE
  fi
  ensure_binfmt || return $E_NOT_POSSIBLE
}

# ensure_binfmt: binfmt_misc mounted and qemu-aarch64 registered and enabled.
ensure_binfmt() {
  if [[ ! -e $BINFMT/status ]]; then
    say "mounting binfmt_misc on $BINFMT"
    mount -t binfmt_misc binfmt_misc "$BINFMT" 2> /dev/null \
      || { say "cannot mount binfmt_misc on $BINFMT (no kernel support, or no privilege)"; return 1; }
  fi
  [[ $(< "$BINFMT/status") == enabled ]] || echo 1 > "$BINFMT/status"
  local entry=$BINFMT/qemu-aarch64
  if [[ ! -e $entry ]] || [[ $(head -n1 "$entry") != enabled ]]; then
    say "enabling qemu-aarch64 in binfmt_misc"
    update-binfmts --enable qemu-aarch64 > /dev/null 2>&1 || true
  fi
  if [[ ! -e $entry ]]; then
    # Not imported into binfmt-support's database: register it by hand, with 'F' (the kernel
    # opens the interpreter now, so the root needs no copy at the registered path).
    say "registering qemu-aarch64 by hand (flag F)"
    printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':F' \
      > "$BINFMT/register" 2> /dev/null || true
  fi
  if [[ ! -e $entry || $(head -n1 "$entry") != enabled ]]; then
    say "qemu-aarch64 is not enabled in $BINFMT (update-binfmts --enable qemu-aarch64 failed)"
    return 1
  fi
}

# The interpreter the kernel runs for aarch64 binaries, and whether it needs to exist inside the
# root: without the 'F' flag the kernel opens it by path at exec time, i.e. inside the chroot.
binfmt_interpreter() { sed -n 's/^interpreter //p' "$BINFMT/qemu-aarch64"; }
binfmt_fixed() { sed -n 's/^flags: //p' "$BINFMT/qemu-aarch64" | grep -q F; }

# put_qemu: the emulator inside the root, at /usr/bin and at the registered path.
put_qemu() {
  if ! cmp -s "$QEMU" "$ROOT$QEMU"; then
    install -D -m 0755 "$QEMU" "$ROOT$QEMU"
  fi
  local interp
  interp=$(binfmt_interpreter)
  if ! binfmt_fixed && [[ -n $interp && $interp != "$QEMU" && ! -e $ROOT$interp ]]; then
    install -d -m 0755 "$ROOT$(dirname "$interp")"
    ln -sfn "$QEMU" "$ROOT$interp"  # resolved inside the chroot
  fi
}

# --- running things inside the root ----------------------------------------------------------
# The environment inside: nothing of the caller's (its PIP_*, PYTHONPATH or venv would leak in),
# except proxies, a pip index the caller chose, and the CA bundle this host trusts.
root_env() {
  local v
  ENV_IN_ROOT=(HOME=/root "PATH=$PATH_IN_ROOT" LANG=C.UTF-8 LC_ALL=C.UTF-8 TERM=dumb "QEMU_CPU=$QEMU_CPU_MODEL"
               DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
               "PIP_DEFAULT_TIMEOUT=${PIP_DEFAULT_TIMEOUT:-180}")
  for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
    [[ -n ${!v:-} ]] && ENV_IN_ROOT+=("$v=${!v}")
  done
  if [[ -s $ROOT/etc/ssl/certs/ca-certificates.crt ]]; then
    ENV_IN_ROOT+=(PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
  fi
}

# The shell that runs first in the private mount namespace: mount /proc and /dev into the root
# ($1), then run "${@:2}" there. With MOUNTS_EXEC=1 it execs chroot (serve: the PID stays
# benchd's; the mounts die with the namespace); else it waits for it and unmounts them.
# Not /sys: with both the host's /sys and its (x86) /proc/cpuinfo in sight, onnxruntime's cpuinfo
# crashes the emulated process (SIGSEGV at `import onnxruntime`, checked with qemu 7.2 and
# onnxruntime 1.32); with /proc alone it only warns that it cannot read /sys/devices/system/cpu.
read -r -d '' NS_SH <<'EOS' || true
set -e
r=$1; shift
unmount() { umount -R "$r/dev" 2>/dev/null || true; umount "$r/proc" 2>/dev/null || true; }
trap unmount EXIT
mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
mount --rbind /dev "$r/dev"
if [ "${MOUNTS_EXEC:-0}" = 1 ]; then trap - EXIT; exec chroot "$@"; fi
set +e
chroot "$@"
rc=$?
exit $rc
EOS

# in_root [chroot options] -- CMD...: run CMD inside the root (clean environment), in the foreground.
in_root() {
  local opts=()
  while [[ $1 != -- ]]; do opts+=("$1"); shift; done
  shift
  root_env
  MOUNTS_EXEC=0 unshare --mount --propagation private -- \
    bash -c "$NS_SH" ns "$ROOT" "${opts[@]}" "$ROOT" /usr/bin/env -i "${ENV_IN_ROOT[@]}" "$@"
}

# --- the root's state ------------------------------------------------------------------------
debootstrapped() { [[ -f $ROOT/$STATE/debootstrap.done && -x $ROOT/usr/bin/python3 && ! -e $ROOT/debootstrap ]]; }

# The files of the checkout that go into the root: tracked and untracked-but-not-ignored ones
# (never .venv, runs/ or caches), NUL-separated, relative to REPO.
list_sources() {
  if git -C "$REPO" rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    local f
    while IFS= read -r -d '' f; do
      [[ -f $REPO/$f ]] && printf '%s\0' "$f"
    done < <(git -C "$REPO" ls-files -z --cached --others --exclude-standard)
  else  # not a git checkout (an unpacked archive): what setup_pi.sh copies, and itself
    (cd "$REPO" && find pyproject.toml README.md benchd raysearch clusters \
      -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0)
  fi
}

# What benchd in the root is built from: a change to any of these reinstalls it.
sources_hash() {
  (cd "$REPO" && list_sources \
    | grep -z -E '^(benchd/|raysearch/|pyproject\.toml$|README\.md$|clusters/(setup_pi\.sh|pi_root\.sh|benchd\.service)$)' \
    | LC_ALL=C sort -z | xargs -0 -r sha256sum | sha256sum | cut -c1-64)
}

benchd_current() {
  [[ -f $ROOT/$STATE/benchd.done && -x $ROOT$VENV_IN_ROOT/bin/benchd ]] \
    && [[ $(< "$ROOT/$STATE/benchd.done") == "$(sources_hash)" ]]
}

# Mounts under ROOT in this (the host's) namespace: none, unless a crashed older run left some.
unmount_leftovers() {
  local m
  findmnt -rn -o TARGET | awk -v r="$ROOT/" 'index($0, r) == 1' | sort -r | while read -r m; do
    say "unmounting leftover $m"
    umount -l "$m" || true
  done
}

# Only ever delete a root this script made (it marks it before anything else), or an empty folder.
ours_or_die() {
  if [[ -e $ROOT && ! -d $ROOT/$STATE ]] && [[ -n $(ls -A "$ROOT" 2> /dev/null) ]]; then
    die "$ROOT exists but was not made by $PROG (no $STATE in it): move it away or pick another --root"
  fi
}

wipe_root() {
  [[ -e $ROOT ]] || return 0
  ours_or_die
  unmount_leftovers
  say "removing $ROOT"
  rm -rf --one-file-system "$ROOT"
}

lock_root() {
  mkdir -p "$(dirname "$ROOT")"
  exec 9> "$ROOT.lock"
  flock -w 3600 9 || die "another $PROG holds $ROOT.lock"
}

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# --- build -----------------------------------------------------------------------------------
debootstrap_root() {
  local t0=$SECONDS
  if debootstrapped; then
    say "reusing the Debian $SUITE arm64 root in $ROOT"
    return
  fi
  if [[ -e $ROOT ]]; then
    ours_or_die
    [[ -z $(ls -A "$ROOT") ]] || say "$ROOT is half-built (the second stage never finished): rebuilding it"
    wipe_root
  fi
  install -d -m 0755 "$ROOT" "$ROOT/$STATE"
  say "first stage: debootstrap --foreign $SUITE arm64 (minbase + $INCLUDE) from $MIRROR"
  debootstrap --arch=arm64 --foreign --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" \
    > "$ROOT/$STATE/debootstrap-1.log" 2>&1 \
    || { tail -n 20 "$ROOT/$STATE/debootstrap-1.log" >&2; die "debootstrap (first stage) failed: $ROOT/$STATE/debootstrap-1.log"; }
  say "first stage done in $(elapsed $((SECONDS - t0)))"
  put_qemu
  local t1=$SECONDS
  say "second stage, emulated (about 7 minutes on 2 cores): chroot $ROOT /debootstrap/debootstrap --second-stage"
  # In a private mount namespace: the /proc and /sys debootstrap mounts inside go away with it.
  if ! unshare --mount --propagation private -- \
      chroot "$ROOT" /usr/bin/env -i "PATH=$PATH_IN_ROOT" LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
      "QEMU_CPU=$QEMU_CPU_MODEL" \
      /debootstrap/debootstrap --second-stage > "$ROOT/$STATE/debootstrap-2.log" 2>&1; then
    tail -n 20 "$ROOT/$STATE/debootstrap-2.log" >&2
    [[ -f $ROOT/debootstrap/debootstrap.log ]] && tail -n 20 "$ROOT/debootstrap/debootstrap.log" >&2
    die "debootstrap (second stage) failed; the next build starts over"
  fi
  say "second stage done in $(elapsed $((SECONDS - t1)))"
  date -u +%FT%TZ > "$ROOT/$STATE/debootstrap.done"
  say "Debian $SUITE arm64 root built in $(elapsed $((SECONDS - t0)))"
}

# Name resolution and this host's CA bundle (pip must reach PyPI from inside, through whatever
# TLS-inspecting proxy this host trusts), refreshed at every build.
network_files() {
  install -m 0644 /dev/null "$ROOT/etc/resolv.conf.new"
  cat /etc/resolv.conf > "$ROOT/etc/resolv.conf.new"
  mv -f "$ROOT/etc/resolv.conf.new" "$ROOT/etc/resolv.conf"
  if [[ -s /etc/ssl/certs/ca-certificates.crt ]]; then
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  fi
}

install_benchd() {
  local hash t0=$SECONDS
  hash=$(sources_hash)
  if benchd_current; then
    say "reusing benchd in $ROOT$VENV_IN_ROOT (its sources are unchanged)"
    return
  fi
  say "copying the checkout's files (git ls-files: no .venv, no runs) to $ROOT$SRC_IN_ROOT"
  rm -f "$ROOT/$STATE/benchd.done"
  rm -rf --one-file-system "$ROOT$SRC_IN_ROOT"
  install -d -m 0755 "$ROOT$SRC_IN_ROOT"
  (cd "$REPO" && list_sources | tar --null -T - -cf -) | tar -xf - -C "$ROOT$SRC_IN_ROOT" --no-same-owner
  say "installing benchd inside with the Pi's own script: setup_pi.sh --no-systemd (about 2.5 minutes emulated)"
  in_root -- bash "$SRC_IN_ROOT/clusters/setup_pi.sh" --repo "$SRC_IN_ROOT" --no-systemd \
      --device-name "$DEVICE_NAME" --device-class "$DEVICE_CLASS" \
    > "$ROOT/$STATE/setup_pi.log" 2>&1 \
    || { tail -n 30 "$ROOT/$STATE/setup_pi.log" >&2; die "setup_pi.sh failed inside the root: $ROOT/$STATE/setup_pi.log"; }
  verify_root
  printf '%s\n' "$hash" > "$ROOT/$STATE/benchd.done"
  say "benchd installed in $(elapsed $((SECONDS - t0)))"
}

# The Pi's venv: aarch64, benchd and its runtime there, torch and ray NOT importable.
read -r -d '' VERIFY_PY <<'EOF' || true
import importlib.util, platform, sys
machine = platform.machine()
if machine != "aarch64":
    sys.exit(f"platform.machine() is {machine!r} in the root, not 'aarch64': is qemu-aarch64 emulating it?")
present = [name for name in ("torch", "ray") if importlib.util.find_spec(name) is not None]
if present:
    sys.exit(f"importable in the Pi's venv, which must have benchd only: {', '.join(present)}")
import benchd, grpc, onnxruntime
print(f"machine={machine} python={platform.python_version()} benchd={benchd.__version__} "
      f"onnxruntime={onnxruntime.__version__} grpcio={grpc.__version__} torch=absent ray=absent")
EOF

VERIFIED=0
verify_root() {
  local out
  out=$(in_root -- "$VENV_IN_ROOT/bin/python" -c "$VERIFY_PY" 2>&1) \
    || { printf '%s\n' "$out" >&2; die "the root's venv is not what a Pi has"; }
  printf '%s\n' "$out" | tail -n 1 > "$ROOT/$STATE/verified"
  say "checked: $(tail -n 1 "$ROOT/$STATE/verified")"
  VERIFIED=1
}

cmd_build() {
  local t0=$SECONDS rc=0
  check_host || rc=$?
  ((rc == 0)) || exit "$rc"
  [[ -f $REPO/clusters/setup_pi.sh && -f $REPO/pyproject.toml ]] || die "--repo: $REPO is not the raysearch repository"
  REPO=$(cd "$REPO" && pwd)
  [[ $REPO/ != "$ROOT"/* ]] || die "--repo is inside --root"
  lock_root
  debootstrap_root
  put_qemu
  network_files
  install_benchd
  benchd_current || die "internal: benchd marker not written"
  # Checked at every build (seconds): the root is still what a Pi has.
  ((VERIFIED)) || verify_root
  say "ready: $ROOT ($(du -sh --one-file-system "$ROOT" 2> /dev/null | cut -f1)) in $(elapsed $((SECONDS - t0)))"
}

cmd_status() {
  local ok=0
  echo "root: $ROOT"
  if debootstrapped; then echo "debootstrap: done $(< "$ROOT/$STATE/debootstrap.done")"; else echo "debootstrap: not done"; ok=1; fi
  if [[ ! -f $ROOT/$STATE/benchd.done ]]; then
    echo "benchd: not installed"; ok=1
  elif benchd_current; then
    echo "benchd: installed, current"
  else
    echo "benchd: installed from other sources than $REPO has now (build reinstalls it)"; ok=1
  fi
  if [[ -f $ROOT/$STATE/verified ]]; then echo "last check: $(< "$ROOT/$STATE/verified")"; fi
  return $ok
}

need_ready_root() {
  local rc=0
  check_host || rc=$?
  ((rc == 0)) || exit "$rc"
  debootstrapped && [[ -x $ROOT$VENV_IN_ROOT/bin/benchd ]] || die "$ROOT is not built: run $PROG build first"
  benchd_current || say "warning: benchd in $ROOT was installed from other sources than $REPO now has (run build)"
  put_qemu
}

cmd_exec() {
  ((${#ARGS[@]})) || die "exec needs a command"
  need_ready_root
  in_root -- "${ARGS[@]}"
}

# --- serve / stop ----------------------------------------------------------------------------
cmd_serve() {
  need_ready_root
  [[ -s $ROOT$TOKEN_IN_ROOT ]] || die "no $ROOT$TOKEN_IN_ROOT (setup_pi.sh makes it): run build"
  install -d -m 0755 "$ROOT/run"
  # The root's ids (its /etc/passwd and /etc/group, not this host's).
  local uid gid video
  uid=$(awk -F: '$1 == "benchd" {print $3}' "$ROOT/etc/passwd")
  gid=$(awk -F: '$1 == "benchd" {print $3}' "$ROOT/etc/group")
  video=$(awk -F: '$1 == "video" {print $3}' "$ROOT/etc/group")
  [[ -n $uid && -n $gid && -n $video ]] || die "no user benchd / group video in the root: run build"
  install -d -m 0755 -o "$uid" -g "$gid" "$ROOT$CACHE_IN_ROOT"
  find "$ROOT/run" -maxdepth 1 -name 'benchd-serve.*' -mtime +7 -exec rm -rf {} + 2> /dev/null || true
  local rundir
  rundir=$(mktemp -d "$ROOT/run/benchd-serve.XXXXXX")
  chmod 0755 "$rundir"
  chown "$uid:$gid" "$rundir"
  local port_file=${rundir#"$ROOT"}/port log=${LOG:-$rundir/benchd.log}
  : > "$log"
  root_env
  local serve=("$VENV_IN_ROOT/bin/benchd" serve --address "$ADDRESS" --port "$PORT" --port-file "$port_file"
               --token-file "$TOKEN_IN_ROOT" --device-name "$DEVICE_NAME" --device-class "$DEVICE_CLASS"
               --cache-dir "$CACHE_IN_ROOT")
  # As in clusters/benchd.service: user benchd, group benchd + video, GRPC_VERBOSITY=ERROR.
  # setsid: its own session and process group (stop kills the group, workers included); exec all
  # the way down, so $! is benchd's PID.
  MOUNTS_EXEC=1 setsid unshare --mount --propagation private -- \
    bash -c "$NS_SH" ns "$ROOT" --userspec="$uid:$gid" --groups="$gid,$video" "$ROOT" \
    /usr/bin/env -i "${ENV_IN_ROOT[@]}" HOME=/opt/benchd GRPC_VERBOSITY=ERROR "${serve[@]}" \
    < /dev/null >> "$log" 2>&1 &
  local pid=$! deadline=$((SECONDS + START_TIMEOUT_S))
  while [[ ! -s $ROOT$port_file ]]; do
    if ! kill -0 "$pid" 2> /dev/null; then
      tail -n 30 "$log" >&2
      die "benchd exited before listening (see $log)"
    fi
    if ((SECONDS > deadline)); then
      kill -KILL -- "-$pid" 2> /dev/null || kill -KILL "$pid" 2> /dev/null || true
      tail -n 30 "$log" >&2
      die "benchd did not listen within ${START_TIMEOUT_S}s (killed; see $log)"
    fi
    sleep 0.5
  done
  local port
  port=$(tr -d '[:space:]' < "$ROOT$port_file")
  printf 'pid=%s port=%s address=%s:%s token_file=%s log=%s\n' \
    "$pid" "$port" "$ADDRESS" "$port" "$ROOT$TOKEN_IN_ROOT" "$log"
}

# proc_stat PID: "STATE PGRP" of a process (fields 3 and 5 of /proc/PID/stat, read after the
# command name, which may hold spaces); fails when there is no such process.
proc_stat() {
  local s
  s=$(< "/proc/$1/stat") 2> /dev/null || return 1
  s=${s##*) }
  read -r -a f <<< "$s"
  printf '%s %s\n' "${f[0]}" "${f[2]}"
}

gone() {  # the process no longer runs (absent, or a zombie waiting for its parent)
  local st
  st=$(proc_stat "$1") || return 0
  [[ $st == Z* ]]
}

group_alive() {  # any live process in process group $1
  local p st
  for p in /proc/[0-9]*; do
    st=$(proc_stat "${p#/proc/}" 2> /dev/null) || continue
    [[ ${st#* } == "$1" && $st != Z* ]] && return 0
  done
  return 1
}

cmd_stop() {
  ((${#ARGS[@]} == 1)) && is_uint "${ARGS[0]}" || die "usage: $PROG stop PID"
  local pid=${ARGS[0]}
  ((EUID == 0)) || die "not root"
  if gone "$pid"; then
    group_alive "$pid" && { kill -KILL -- "-$pid" 2> /dev/null || true; }
    say "no process $pid (already stopped)"
    return 0
  fi
  # Only a benchd serve running inside this root: never anything else that has this PID now.
  local proot cmdline
  proot=$(readlink "/proc/$pid/root" 2> /dev/null || true)
  cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null || true)
  if [[ $proot != "$(readlink -f "$ROOT")" || $cmdline != *"/bin/benchd serve "* ]]; then
    die "process $pid is not a benchd serve of $ROOT (root ${proot:-?}: $cmdline): not stopping it"
  fi
  local port_file=""
  [[ $cmdline =~ --port-file\ (/run/benchd-serve\.[A-Za-z0-9]+/port) ]] && port_file=$ROOT${BASH_REMATCH[1]}
  kill -TERM "$pid" 2> /dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while ! gone "$pid" && ((SECONDS < deadline)); do sleep 0.5; done
  if ! gone "$pid"; then
    say "benchd $pid still runs after ${STOP_TIMEOUT_S}s: SIGKILL to its process group"
  fi
  # Whatever is left of its group (the benchmark worker): killed; pgid == pid (setsid).
  if group_alive "$pid"; then
    kill -KILL -- "-$pid" 2> /dev/null || true
    deadline=$((SECONDS + 20))
    while group_alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
  fi
  group_alive "$pid" && die "process group $pid survived SIGKILL"
  [[ -z $port_file ]] || rm -f "$port_file"  # its log stays next to it
  say "stopped benchd $pid"
}

cmd_remove() {
  ((EUID == 0)) || die "not root"
  lock_root
  wipe_root
  rm -f "$ROOT.lock"
}

case $COMMAND in
  build) cmd_build ;;
  serve) cmd_serve ;;
  stop) cmd_stop ;;
  exec) cmd_exec ;;
  status) cmd_status ;;
  check-host) check_host ;;
  remove) cmd_remove ;;
  *) die "unknown command: $COMMAND (see --help)" ;;
esac
