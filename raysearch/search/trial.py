"""One search trial: config -> spec -> latency first -> train (reporting every epoch) -> export ->
test IoU through onnxruntime -> latency of the trained ONNX -> final report.

Runs inside a Ray Tune worker. Everything it produces for MLflow (the ONNX file, the benchmark
reply, prediction overlays, metrics) goes into the checkpoint of its final report; the driver's
MLflow callback logs it from there, so one process writes to the tracking store.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from raysearch.models import ModelSpec
from raysearch.records import names as obj
from raysearch.search.latency import BenchSettings, Measurement, measure
from raysearch.storage import DocumentStore, delete, exists, fetch_tree, publish_tree, read_bytes, write_bytes

log = logging.getLogger(__name__)

CKPT_DIR, FINAL_DIR = "ckpt", "final"


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its knobs (the same for every trial of a search)."""

    data: str
    bench: BenchSettings
    latency_cache: str
    data_seed: int = 0
    limit: int | None = None
    epochs: int = 400
    batch_size: int = 8
    lr: float = 0.01
    amp: bool = False  # mixed precision on CUDA (changes the numbers: part of the result key)
    seed: int = 0
    num_workers: int = 0
    max_latency_ms: float | None = None
    logit_threshold: float = 0.0
    init_checkpoint: str | None = None  # with epochs=0: evaluate these weights (path or URI), no training
    overlays: int = 3
    exporter: str = "torchscript"
    results_cache: str | None = None  # finished trials by spec: a repeated config is not trained again
    trial_state: str | None = None  # folder or URI: each trial's newest weights, whatever Ray Tune recorded
    fixed: dict = field(default_factory=dict)  # knobs the stage fixes (merged under the config)
    models: dict = field(default_factory=dict)  # name -> knobs, for a config key "model" (stage 7)
    init_checkpoints: dict = field(default_factory=dict)  # model name -> weights to start from (epochs=0)
    families: tuple = ()  # user model families (ModelFamily) to register in the trial's process

    def checkpoint_for(self, config: dict) -> str | None:
        return self.init_checkpoints.get(config.get("model")) or self.init_checkpoint

    def result_key(self, spec: ModelSpec, init_checkpoint: str | None = None) -> str:
        """Everything that decides a trained trial's outcome, hashed."""
        import hashlib

        ident = [spec.to_json(), self.data, self.data_seed, self.limit, self.epochs, self.batch_size, self.lr,
                 self.seed, init_checkpoint or self.init_checkpoint, self.logit_threshold, self.bench.cache_key(spec)]
        if self.amp:  # appended only when set, so the keys of fp32 results stored before it existed still match
            ident.append("amp")
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]

    def spec_for(self, config: dict) -> ModelSpec:
        """The trial's spec: fixed knobs, then the named model's knobs, then the config's."""
        cfg = dict(config)
        knobs = dict(self.fixed)
        if "model" in cfg:
            name = cfg.pop("model")
            if name not in self.models:
                raise ValueError(f"model={name!r} is not one of this stage's models {sorted(self.models)}")
            knobs.update(self.models[name])
        knobs.update(cfg)
        return ModelSpec.from_dict(knobs, strict=True)


def base_metrics(**values) -> dict:
    """Every report carries every objective and scheduler metric (Ray Tune requires it)."""
    m = {obj.IOU.name: 0.0, obj.LATENCY_MS.name: float("nan"), obj.VAL_IOU.name: 0.0, obj.VAL_LOSS.name: float("nan"),
         obj.EPOCH: 0, obj.PRUNED: 0, obj.FINAL: 0, obj.REPLAYED: 0}
    m.update(values)
    return m


def write_overlay(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, width: int = 480) -> None:
    """image | ground truth (green) | prediction (red over the image), side by side."""
    h, w = gt.shape
    scale = width / w
    size = (width, max(1, round(h * scale)))
    img = cv2.resize(image, size)
    g = cv2.resize(gt, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    p = cv2.resize(pred, size, interpolation=cv2.INTER_NEAREST).astype(bool)
    gt_panel = np.where(g[..., None], np.array([40, 200, 40], np.uint8), (img // 3)).astype(np.uint8)
    pred_panel = img.copy()
    pred_panel[p] = (0.5 * pred_panel[p] + 0.5 * np.array([230, 40, 40])).astype(np.uint8)
    cv2.imwrite(str(path), cv2.cvtColor(np.hstack([img, gt_panel, pred_panel]), cv2.COLOR_RGB2BGR))


def run_trial(config: dict, settings: TrialSettings) -> None:
    """The Ray Tune function trainable (bind ``settings`` with ``tune.with_parameters``)."""
    import torch
    from ray import tune

    from raysearch.data import open_split
    from raysearch.models import build_model, register_family
    from raysearch.training.evaluate import OnnxPredictor, evaluate
    from raysearch.training.model_summary import summarize
    from raysearch.training.train import EpochMetrics, TrainConfig, train, trained_history

    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    for name in ("ray.train", "ray.tune"):  # "checkpoint created" on every report would flood the driver's console
        logging.getLogger(name).setLevel(logging.WARNING)
    for family in settings.families:  # a user's own model family, shipped with the settings
        register_family(family, replace=True)
    spec = settings.spec_for(config)  # bad values raise, naming the value
    init_checkpoint = settings.checkpoint_for(config)
    result_key = settings.result_key(spec, init_checkpoint)
    results = DocumentStore(settings.results_cache) if settings.results_cache else None

    calibration = functools.cache(calibration_for(spec, settings))  # read once for both exports of the trial

    trial_id = tune.get_context().get_trial_id()
    work = Path(tempfile.mkdtemp(prefix="raysearch-trial-"))
    try:
        if results is not None and (done := results.get(result_key)) is not None:
            # this configuration already ran: report its figures and artifacts, train nothing. The
            # same trial again is a restore after its final report was lost with the driver.
            ran_as = done.pop(RAN_AS, None)
            artifacts = fetch_tree(f"{results.root}/{result_key}", work / FINAL_DIR)
            tune.report({**done, obj.DUPLICATE: int(ran_as != trial_id)},
                        checkpoint=tune.Checkpoint.from_directory(str(work / FINAL_DIR)) if artifacts else None)
            return
        untrained = build_model(spec)  # built once: for the summary, the latency, and as stage 1's evaluated model
        summ = summarize(untrained)
        shape = {obj.PARAMS_TOTAL: summ.params_total, obj.PARAMS_EXECUTED: summ.params_executed, obj.MACS: summ.macs}

        # 1. latency first: the untrained model has the trained model's latency
        first = untrained_latency(spec, settings, work, calibration, untrained)
        latency = first.latency_ms
        if settings.max_latency_ms is not None and latency > settings.max_latency_ms:
            final = work / FINAL_DIR
            final.mkdir()
            (final / obj.BENCHMARK_FILE).write_text(json.dumps(first.to_dict(), indent=2))
            tune.report(base_metrics(**{obj.LATENCY_MS.name: latency, obj.FPS: 1000 / latency, obj.PRUNED: 1,
                                        obj.FINAL: 1, obj.LATENCY_UNTRAINED: latency, obj.EPOCHS_TRAINED: 0},
                                     **shape, **first.precision_metrics()),
                        checkpoint=tune.Checkpoint.from_directory(str(final)))
            return

        # 2. train, reporting every epoch so the scheduler can stop us
        ckpt_dir = work / CKPT_DIR
        ckpt_dir.mkdir()
        state = TrialState(settings.trial_state, trial_id) if settings.trial_state else None
        if state is None or not state.restore(ckpt_dir):
            restored = tune.get_checkpoint()  # a search started before trial states existed
            if restored is not None:
                with restored.as_directory() as d:
                    for f in STATE_FILES:
                        if (Path(d) / f).is_file():
                            shutil.copy(Path(d) / f, ckpt_dir / f)
        resume = (ckpt_dir / obj.LAST_WEIGHTS).is_file()

        if settings.epochs == 0:
            model = untrained
            if init_checkpoint:
                state = torch.load(io.BytesIO(read_bytes(init_checkpoint)), map_location="cpu",
                                   weights_only=False)["model"]
                model.load_state_dict(state)  # Fast-SCNN's weights do not depend on the input size
            model.eval()
            history, gpu_mib = [], None
        else:
            # every epoch is reported (the scheduler decides on it); weights are saved every ~5% of
            # the epochs, which bounds both the storage traffic and what a restart loses
            every = max(1, round(settings.epochs / 20))

            def report_epoch(m: EpochMetrics, checkpoint: Any = None, replayed: bool = False) -> None:
                extra = {obj.REPLAYED: 1} if replayed else {}
                tune.report(base_metrics(**{obj.IOU.name: m.val_iou, obj.LATENCY_MS.name: latency,
                                            obj.VAL_IOU.name: m.val_iou, obj.VAL_LOSS.name: m.val_loss,
                                            obj.EPOCH: m.epoch, **extra},
                                         train_loss=m.train_loss, lr=m.lr, epoch_seconds=m.seconds),
                            checkpoint=checkpoint)

            def on_epoch(m: EpochMetrics) -> None:
                save = m.epoch % every == 0 or m.epoch == settings.epochs
                if save and state is not None:
                    state.save(ckpt_dir)  # before the report, so a reported epoch is a saved one
                report_epoch(m, tune.Checkpoint.from_directory(str(ckpt_dir)) if save and state is None else None)

            if resume:  # the epochs trained before: a driver killed since may never have logged them
                for m in trained_history(ckpt_dir):
                    report_epoch(m, replayed=True)
            cfg = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed,
                              amp=settings.amp, num_workers=settings.num_workers, progress=False)
            sources = {s: open_split(settings.data, s, seed=settings.data_seed, limit=settings.limit) for s in ("train", "val")}
            result = train(spec, sources["train"], sources["val"], cfg, out_dir=ckpt_dir, on_epoch=on_epoch, resume=resume)
            model, history, gpu_mib = result.model, result.history, result.gpu_max_memory_mib

        # 3. the deployed artifact is the measured one: export, test IoU via onnxruntime, benchmark
        final = work / FINAL_DIR
        (final / "overlays").mkdir(parents=True)
        onnx_path = _export(model, final / obj.MODEL_FILE, settings, calibration)
        test = open_split(settings.data, "test", seed=settings.data_seed, limit=settings.limit)

        def keep(i, image, gt, pred):
            if i < settings.overlays:
                write_overlay(final / "overlays" / f"{i:02d}_{test.stems[i]}.png", image, gt, pred)

        predictor = OnnxPredictor(onnx_path, threads=1)
        ev = evaluate(predictor, test, input_hw=spec.input_hw, in_channels=spec.in_channels,
                      logit_threshold=settings.logit_threshold, on_prediction=keep)
        bench = measure(onnx_path, settings.bench)
        if (ckpt_dir / obj.BEST_WEIGHTS).is_file():  # the weights travel with the result (stage 1 reuses them)
            shutil.copy(ckpt_dir / obj.BEST_WEIGHTS, final / obj.BEST_WEIGHTS)
        (final / obj.BENCHMARK_FILE).write_text(json.dumps(bench.to_dict(), indent=2))
        (final / "metrics.json").write_text(json.dumps({"spec": spec.to_dict(), "test": ev.metrics(),
                                                        "history": [h.to_dict() for h in history]}, indent=2))
        last = history[-1] if history else None
        final_metrics = base_metrics(**{
            obj.IOU.name: ev.iou, obj.LATENCY_MS.name: bench.latency_ms, obj.FPS: 1000 / bench.latency_ms,
            obj.VAL_IOU.name: last.val_iou if last else ev.iou, obj.VAL_LOSS.name: last.val_loss if last else float("nan"),
            obj.EPOCH: last.epoch if last else 0, obj.FINAL: 1, obj.EPOCHS_TRAINED: len(history),
            obj.LATENCY_UNTRAINED: latency, obj.TAG_DEVICE_NAME: bench.device,
            obj.TAG_DEVICE_CLASS: bench.result.device_class},
            train_seconds=sum(h.seconds for h in history),
            iou_native_gt=ev.iou_native_gt, pooled_iou=ev.pooled_iou, miou=ev.miou,
            latency_ms_mean=bench.result.latency_ms_mean, latency_ms_p90=bench.result.latency_ms_p90,
            latency_cv=bench.result.latency_cv, **shape, **bench.precision_metrics(),
            **({obj.GPU_MAX_MEMORY_MIB: gpu_mib} if gpu_mib is not None else {}))
        if results is not None:  # the artifacts first: a result in the cache always has them
            publish_tree(final, f"{results.root}/{result_key}")  # best.pt included: int8 and stage 1 start from it
            results.put(result_key, {**final_metrics, RAN_AS: trial_id})
        tune.report(final_metrics, checkpoint=tune.Checkpoint.from_directory(str(final)))
        if results is not None and state is not None:  # the cached result (with best.pt) stands for it now
            state.remove()
    finally:
        shutil.rmtree(work, ignore_errors=True)


STATE_FILES = (obj.BEST_WEIGHTS, obj.LAST_WEIGHTS)
RAN_AS = "_trial_id"  # in a results-cache entry: the trial that produced it


class TrialState:
    """A trial's newest weights (``best.pt`` + ``last.pt`` in one file, written at once) in the
    search's storage, under the trial's id.

    Ray Tune's own checkpoints are not used for this: with ``num_to_keep`` they rotate, and a
    driver killed without a word (SIGKILL, a lost head node) leaves an experiment snapshot that can
    name a checkpoint already deleted, so the restored trial failed ("does not exist on storage
    anymore"). The trial's state has one name and is replaced whole, so a restore, a retry after a
    lost node or a resumed search always continues from the newest saved epoch."""

    def __init__(self, root: str, trial_id: str) -> None:
        self.uri = f"{root.rstrip('/')}/{trial_id}.pt"

    def save(self, ckpt_dir: Path) -> None:
        import torch

        files = {f: (ckpt_dir / f).read_bytes() for f in STATE_FILES if (ckpt_dir / f).is_file()}
        buf = io.BytesIO()
        torch.save(files, buf)
        write_bytes(self.uri, buf.getvalue())

    def restore(self, ckpt_dir: Path) -> bool:
        """Write the saved files into ``ckpt_dir``; False when there is no saved state."""
        import torch

        if not exists(self.uri):
            return False
        for name, content in torch.load(io.BytesIO(read_bytes(self.uri)), weights_only=True).items():
            if name in STATE_FILES:
                (ckpt_dir / name).write_bytes(content)
        log.info("trial state restored from %s", self.uri)
        return True

    def remove(self) -> None:
        try:
            delete(self.uri)
        except OSError as e:  # only storage is wasted
            log.warning("could not remove the trial state %s: %s", self.uri, e)


def calibration_for(spec: ModelSpec, settings: TrialSettings) -> Callable[[], list]:
    """The int8 calibration inputs of ``spec`` (validation images fed as at inference), read when
    first called: an fp32 export never reads them."""
    def calibration() -> list:
        from raysearch.data import open_split
        from raysearch.training.quantize import calibration_inputs

        return calibration_inputs(open_split(settings.data, "val", seed=settings.data_seed, limit=settings.limit), spec)

    return calibration


def untrained_latency(spec: ModelSpec, settings: TrialSettings, work: Path, calibration: Callable[[], list],
                      model=None) -> Measurement:
    """The benchmark of ``spec``'s untrained model (its latency is the trained model's): from the
    latency cache, or exported to ``work``, measured on the farm and cached. A cached document
    without every field of today's reply (from an older benchd) is measured again."""
    cache = DocumentStore(settings.latency_cache)
    key = settings.bench.cache_key(spec)
    cached = cache.get(key)
    if cached is not None:
        try:
            return Measurement.from_dict(cached)
        except (KeyError, TypeError, ValueError):
            log.info("the cached latency of %s lacks fields of today's reply: measuring it again", spec.name)
    from raysearch.models import build_model

    path = _export(model if model is not None else build_model(spec), work / "untrained.onnx", settings, calibration)
    measured = measure(path, settings.bench)
    cache.put(key, measured.to_dict())
    return measured


def sweep_latencies(configs: list[dict], settings: TrialSettings) -> dict[str, float]:
    """Every configuration's latency before any training (`--sampler latency-first`), as
    `raysearch.search.latency_first.config_key` -> ms; the trials then find theirs in the latency cache."""
    from raysearch.search.latency_first import config_key

    out: dict[str, float] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="raysearch-sweep-") as work:
        for n, config in enumerate(configs, 1):
            spec = settings.spec_for(config)
            out[config_key(config)] = untrained_latency(spec, settings, Path(work),
                                                        calibration_for(spec, settings)).latency_ms
            log.info("latency sweep %d/%d: %s %.3f ms", n, len(configs), spec.name, out[config_key(config)])
    log.info("latency sweep: %d configurations in %.0f s", len(configs), time.time() - t0)
    return out


def _export(model, path: Path, settings: TrialSettings, calibration: Callable[[], list]) -> Path:
    """The deployable ONNX file of ``model``: the fp32 export, or with ``precision=int8`` that
    export quantized, calibrated on ``calibration()`` (validation images fed as at inference)."""
    from raysearch.training.export import export_onnx

    if model.spec.precision == "fp32":
        return export_onnx(model, path, exporter=settings.exporter).path
    from raysearch.training.quantize import quantize_int8

    fp32 = export_onnx(model, path.with_name(path.stem + "-fp32.onnx"), exporter=settings.exporter).path
    quantize_int8(fp32, path, calibration())
    fp32.unlink()
    return path
