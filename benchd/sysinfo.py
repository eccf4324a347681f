"""Device facts and sensors (temperature, clock, throttling), read from sysfs/procfs.

Everything here degrades to "unknown" (None / "") on machines without the sensor: an x86 VM has
no throttle flag, and reporting it as "not throttled" would be a lie.
"""

from __future__ import annotations

import glob
import os
import platform
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

# vcgencmd get_throttled bits: 0-3 are "now", 16-19 are "has occurred since boot".
_NOW_MASK = 0xF  # under-voltage, arm frequency capped, throttled, soft temperature limit
_STICKY_MASK = 0xF0000
_PI_THROTTLED_SYSFS = "/sys/devices/platform/soc/soc:firmware/get_throttled"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return None


def cpu_temperature_c() -> float | None:
    """CPU temperature in Celsius, or None without a sensor (prefers the 'cpu-thermal' zone)."""
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*"))
    preferred = [z for z in zones if (_read(f"{z}/type") or "") in ("cpu-thermal", "x86_pkg_temp")]
    for zone in preferred + zones:
        raw = _read(f"{zone}/temp")
        if raw and raw.lstrip("-").isdigit():
            return int(raw) / 1000.0
    return None


def cpu_freq_mhz() -> float | None:
    """Current clock of CPU 0 in MHz (cpufreq), or None where cpufreq is absent."""
    raw = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return int(raw) / 1000.0 if raw and raw.isdigit() else None


def governor() -> str:
    return _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or ""


@dataclass(frozen=True)
class Throttle:
    """A reading of the Raspberry Pi firmware's throttle word (None: no such sensor)."""

    value: int | None

    @property
    def raw(self) -> str:
        return "" if self.value is None else hex(self.value)

    @property
    def now(self) -> bool | None:
        return None if self.value is None else bool(self.value & _NOW_MASK)

    @property
    def sticky(self) -> int:
        return 0 if self.value is None else self.value & _STICKY_MASK


def read_throttle() -> Throttle:
    """`vcgencmd get_throttled` through sysfs when the kernel exposes it, else the tool."""
    raw = _read(_PI_THROTTLED_SYSFS)
    if raw:
        try:
            return Throttle(int(raw, 16))
        except ValueError:
            pass
    tool = shutil.which("vcgencmd")
    if tool:
        try:
            out = subprocess.run(
                [tool, "get_throttled"], capture_output=True, text=True, timeout=2, check=False
            ).stdout
            if "=" in out:
                return Throttle(int(out.strip().split("=", 1)[1], 16))
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return Throttle(None)


def throttled_between(before: Throttle, after: Throttle) -> bool | None:
    """True if throttled before, after, or a sticky bit appeared in between; None if unknown."""
    if before.value is None or after.value is None:
        return None
    return bool(before.now or after.now or (after.sticky & ~before.sticky))


def cpu_model() -> str:
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_model() -> str:
    """Board model from the device tree (Raspberry Pi), "" elsewhere."""
    return (_read("/proc/device-tree/model") or "").rstrip("\x00")


def os_name() -> str:
    text = _read("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return f"{platform.system()} {platform.release()}"


def meminfo_bytes() -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes, zeros where /proc/meminfo is missing."""
    values: dict[str, int] = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """A Vm* field (VmRSS, VmHWM, ...) of /proc/PID/status in bytes, 0 if unavailable."""
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith(field + ":"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else 0
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0) so the next reading is a per-run peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_ARM = ("aarch64", "arm64", "armv7l", "armv8l")
# The aarch64 HWCAP / HWCAP2 bits that pick onnxruntime's kernels (int8 dot product and matrix
# multiply, fp16, SVE), named as the kernel's /proc/cpuinfo "Features" line names them.
_HWCAP = {"fp": 0, "asimd": 1, "aes": 3, "crc32": 7, "atomics": 8, "fphp": 9, "asimdhp": 10, "asimdrdm": 12,
          "asimddp": 20, "sve": 22, "asimdfhm": 23}
_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}
_AT_HWCAP, _AT_HWCAP2 = 16, 26
# x86 flags with the same role (VNNI and AVX-512 int8 paths, fp16 conversion).
_X86_FLAGS = ("sse4_1", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _cpuinfo_x86() -> bool:
    return any(line.startswith(("vendor_id", "flags")) for line in (_read("/proc/cpuinfo") or "").splitlines())


def emulator() -> str:
    """"" on real hardware; under qemu-user, what emulates this process (e.g. "qemu-user, cpu
    cortex-a72"). qemu-user passes the host's /proc/cpuinfo through: an x86 CPU described to an
    ARM process gives the emulator away."""
    if platform.machine() not in _ARM or not _cpuinfo_x86():
        return ""
    return f"qemu-user, cpu {os.environ.get('QEMU_CPU') or 'the emulator default'}"


def cpu_features() -> list[str]:
    """The CPU features that select onnxruntime's kernels, as this process sees them: aarch64 from
    the auxiliary vector (what the kernel, or qemu, tells programs), x86 from /proc/cpuinfo."""
    if platform.machine() in _ARM:
        try:
            import ctypes

            getauxval = ctypes.CDLL(None).getauxval
            getauxval.restype = ctypes.c_ulong
            hwcap, hwcap2 = getauxval(_AT_HWCAP), getauxval(_AT_HWCAP2)
        except (OSError, AttributeError):
            return []
        return [n for n, b in _HWCAP.items() if hwcap >> b & 1] + [n for n, b in _HWCAP2.items() if hwcap2 >> b & 1]
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("flags") and ":" in line:
            flags = set(line.split(":", 1)[1].split())
            return [f for f in _X86_FLAGS if f in flags]
    return []


def host_facts() -> dict[str, object]:
    """Static facts for GetInfo (onnxruntime's are reported by the worker). Under emulation the
    CPU model is the emulated one (the host's goes to host_cpu_model), never the host's passed off
    as the device's."""
    total, available = meminfo_bytes()
    emulated_by = emulator()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": f"{os.environ.get('QEMU_CPU') or 'unknown'} (emulated)" if emulated_by else cpu_model(),
        "emulated": bool(emulated_by),
        "emulator": emulated_by,
        "host_cpu_model": cpu_model() if emulated_by else "",
        "cpu_features": cpu_features(),
        "device_model": device_model(),
        "cpu_cores": os.cpu_count() or 1,
        "architecture": platform.machine(),
        "os": os_name(),
        "kernel": platform.release(),
        "memory_total_bytes": total,
        "memory_available_bytes": available,
        "governor": governor(),
        "python_version": platform.python_version(),
    }


class Sensors:
    """Live sensors of the device; the server's monitor reads them (tests substitute fakes)."""

    def temperature_c(self) -> float | None:
        return cpu_temperature_c()

    def freq_mhz(self) -> float | None:
        return cpu_freq_mhz()

    def throttle(self) -> Throttle:
        return read_throttle()
