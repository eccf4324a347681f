"""The study's defaults and the ``--quick`` ones (minutes on 2 CPU cores), in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    epochs: int  # training epochs per trial
    resolutions: tuple[int, ...]  # input sizes, largest first
    data: str  # the dataset when --data is not given
    bench_runs: int  # timed runs per benchmark
    bench_warmup_runs: int  # discarded warm-up runs
    bench_min_duration_s: float  # time each benchmark at least this long (a fast model's consecutive runs are not
    #                     independent: a window of a few ms is precise about that moment only)


STUDY = Preset(epochs=400, resolutions=(512, 256, 224, 192, 160, 128, 96), data="synthetic", bench_runs=50,
               bench_warmup_runs=10, bench_min_duration_s=2.0)
QUICK = Preset(epochs=8, resolutions=(128, 96, 64), data="synthetic:120", bench_runs=10, bench_warmup_runs=2,
               bench_min_duration_s=1.0)


def preset(quick: bool) -> Preset:
    return QUICK if quick else STUDY
