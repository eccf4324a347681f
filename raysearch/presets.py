"""The study's defaults and the ``--quick`` ones (minutes on 2 CPU cores), in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    epochs: int  # training epochs per trial
    resolutions: tuple[int, ...]  # input sizes, largest first
    data: str  # the dataset when --data is not given
    bench_runs: int  # timed runs per benchmark
    bench_warmup: int  # discarded warm-up runs


STUDY = Preset(epochs=400, resolutions=(512, 256, 224, 192, 160, 128, 96), data="synthetic", bench_runs=50,
               bench_warmup=10)
QUICK = Preset(epochs=8, resolutions=(128, 96, 64), data="synthetic:120", bench_runs=10, bench_warmup=2)


def preset(quick: bool) -> Preset:
    return QUICK if quick else STUDY
