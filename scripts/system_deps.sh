#!/usr/bin/env bash
# System packages that some tests use: a real Prometheus (the dashboards' queries), headless
# Chromium (the MLflow UI), and debootstrap + qemu-user-static + binfmt-support (the emulated
# Raspberry Pi of tests/deploy/test_pi_emulated.py, built by clusters/pi_root.sh). Installed with apt
# when missing and when we are root; otherwise the tests that need them skip, saying which
# package is missing.
set -u
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || [ -x /usr/sbin/update-binfmts ] || need+=(binfmt-support)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: cannot apt-get install ${need[*]} here; the tests that need them will skip"
  exit 0
fi
echo "system-deps: installing ${need[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/raysearch-apt.log 2>&1; then
  echo "system-deps: apt-get failed (see /tmp/raysearch-apt.log); the tests that need ${need[*]} will skip"
fi
exit 0
