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
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np

from raysearch.data import open_split
from raysearch.models import ModelSpec, build_model, register_family, spec_of
from raysearch.records import names as obj
from raysearch.search.latency import BenchSettings, Measurement, measure, open_farm
from raysearch.storage import DocumentStore, delete, exists, fetch_tree, publish_tree, read_bytes, write_bytes

if TYPE_CHECKING:
    import torch

    from benchd.farm import BenchFarm
    from raysearch.search.latency_first import LatencyOracle

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
    device_iou: str = "int8"  # which candidates' test IoU the device computes (records.names.DEVICE_IOU_MODES)
    init_checkpoint: str | None = None  # with epochs=0: evaluate these weights (path or URI), no training
    overlays: int = 3
    exporter: str = "torchscript"
    results_cache: str | None = None  # finished trials by spec: a repeated config is not trained again
    trial_state: str | None = None  # folder or URI: each trial's newest weights, whatever Ray Tune recorded
    fixed: dict[str, Any] = field(default_factory=dict)  # knobs the stage fixes (merged under the config)
    models: dict[str, Any] = field(default_factory=dict)  # name -> knobs, for a config key "model" (stage 7)
    init_checkpoints: dict[str, Any] = field(default_factory=dict)  # model name -> weights to start from (epochs=0)
    families: tuple[Any, ...] = ()  # user model families (ModelFamily) to register in the trial's process

    def checkpoint_for(self, config: dict[str, Any]) -> str | None:
        model = config.get("model")
        return (self.init_checkpoints.get(model) if model else None) or self.init_checkpoint

    def result_key(self, spec: ModelSpec, init_checkpoint: str | None = None) -> str:
        """Everything that decides a trained trial's outcome, hashed."""
        import hashlib

        ident = [spec.to_json(), self.data, self.data_seed, self.limit, self.epochs, self.batch_size, self.lr,
                 self.seed, init_checkpoint or self.init_checkpoint, self.logit_threshold, self.bench.cache_key(spec)]
        if self.amp:  # appended only when set, so the keys of fp32 results stored before it existed still match
            ident.append("amp")
        if self.device_iou_of(spec):  # likewise: a result measured on the device is another result
            ident.append("device_iou")
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:32]

    def device_iou_of(self, spec: ModelSpec) -> bool:
        """Whether the device computes this candidate's test IoU (``device_iou``: off, int8, all)."""
        return self.device_iou == "all" or (self.device_iou == "int8" and spec.precision == "int8")

    def spec_for(self, config: dict[str, Any]) -> ModelSpec:
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


def base_metrics(**values: Any) -> dict[str, Any]:
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


def trial_device() -> str:
    """"cuda" when Ray gave this trial a GPU, else "cpu". A GPU torch cannot use (a CPU wheel, a
    missing driver) fails the trial at once, naming the node: training on the CPU instead would be
    silently tens of times slower."""
    import socket

    import ray
    import torch

    from raysearch.training.train import cuda_report

    gpus = ray.get_gpu_ids()
    if not gpus:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError(f"Ray gave this trial GPU {', '.join(map(str, gpus))} on node {socket.gethostname()} "
                           f"({ray.util.get_node_ip_address()}), but {cuda_report()}: install a CUDA build of torch "
                           "there, or search with --gpus-per-trial 0")
    return "cuda"


def run_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """The Ray Tune function trainable (bind ``settings`` with ``tune.with_parameters``): a
    configuration already run is replayed from the results cache; otherwise its latency first
    (over the budget: pruned, never trained), then training with a report every epoch, then
    the deployed artifact exported, judged and measured (`_Trial`'s steps, in that order)."""
    import torch
    from ray import tune


    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    for name in ("ray.train", "ray.tune"):  # "checkpoint created" on every report would flood the driver's console
        logging.getLogger(name).setLevel(logging.WARNING)
    for family in settings.families:  # a user's own model family, shipped with the settings
        register_family(family, replace=True)
    trial = _Trial(config, settings)
    try:
        if trial.replay_cached():
            return
        first = trial.latency_first()
        if trial.pruned(first):
            return
        model, history, gpu_mib = trial.train(first.latency_ms)
        trial.finalize(model, history, gpu_mib, first.latency_ms)
    finally:
        shutil.rmtree(trial.work, ignore_errors=True)


class _Trial:
    """One run of `run_trial`: its configuration resolved once, its steps as methods."""

    def __init__(self, config: dict[str, Any], settings: TrialSettings) -> None:
        from ray import tune

        self.settings = settings
        self.spec = settings.spec_for(config)  # bad values raise, naming the value
        self.init_checkpoint = settings.checkpoint_for(config)
        self.result_key = settings.result_key(self.spec, self.init_checkpoint)
        self.results = DocumentStore(settings.results_cache) if settings.results_cache else None
        self.calibration = functools.cache(calibration_for(self.spec, settings))  # read once for both exports
        self.trial_id = tune.get_context().get_trial_id()
        self.work = Path(tempfile.mkdtemp(prefix="raysearch-trial-"))
        self.ckpt_dir = self.work / CKPT_DIR
        self.final = self.work / FINAL_DIR
        self.state = TrialState(settings.trial_state, self.trial_id) if settings.trial_state else None
        self.untrained: Any = None  # built once: for the summary, the latency, and as stage 1's evaluated model
        self.shape: dict[str, float] = {}

    def replay_cached(self) -> bool:
        """0. A configuration that already ran: report its figures and artifacts, train nothing. The
        same trial again is a restore after its final report was lost with the driver."""
        from ray import tune

        if self.results is None or (done := self.results.get(self.result_key)) is None:
            return False
        ran_as = done.pop(RAN_AS, None)
        artifacts = fetch_tree(f"{self.results.root}/{self.result_key}", self.final)
        tune.report({**done, obj.DUPLICATE: int(ran_as != self.trial_id)},
                    checkpoint=tune.Checkpoint.from_directory(str(self.final)) if artifacts else None)
        return True

    def latency_first(self) -> Measurement:
        """1. Latency first: the untrained model has the trained model's latency."""
        from raysearch.training.model_summary import summarize

        self.untrained = build_model(self.spec)
        summ = summarize(self.untrained)
        self.shape = {obj.PARAMS_TOTAL: summ.params_total, obj.PARAMS_EXECUTED: summ.params_executed,
                      obj.MACS: summ.macs}
        return untrained_latency(self.spec, self.settings, self.work, self.calibration, self.untrained)

    def pruned(self, first: Measurement) -> bool:
        """Over the latency budget: report the measured figures and stop, untrained."""
        from ray import tune

        latency = first.latency_ms
        if self.settings.max_latency_ms is None or latency <= self.settings.max_latency_ms:
            return False
        self.final.mkdir()
        (self.final / obj.BENCHMARK_FILE).write_text(json.dumps(first.to_dict(), indent=2))
        tune.report(base_metrics(**{obj.LATENCY_MS.name: latency, obj.FPS: 1000 / latency, obj.PRUNED: 1,
                                    obj.FINAL: 1, obj.LATENCY_UNTRAINED: latency, obj.EPOCHS_TRAINED: 0},
                                 **self.shape, **first.precision_metrics()),
                    checkpoint=tune.Checkpoint.from_directory(str(self.final)))
        return True

    def _restore(self) -> bool:
        """The trial's newest weights into ``ckpt_dir``; whether there is an epoch to resume from."""
        from ray import tune

        self.ckpt_dir.mkdir()
        if self.state is None or not self.state.restore(self.ckpt_dir):
            restored = tune.get_checkpoint()  # a search started before trial states existed
            if restored is not None:
                with restored.as_directory() as d:
                    for f in STATE_FILES:
                        if (Path(d) / f).is_file():
                            shutil.copy(Path(d) / f, self.ckpt_dir / f)
        return (self.ckpt_dir / obj.LAST_WEIGHTS).is_file()

    def train(self, latency: float) -> tuple[Any, list[Any], float | None]:
        """2. Train, reporting every epoch so the scheduler can stop us: (model, history, GPU MiB)."""
        import torch
        from ray import tune

        from raysearch.training.train import EpochMetrics, TrainConfig, train, trained_history

        settings, ckpt_dir, state = self.settings, self.ckpt_dir, self.state
        resume = self._restore()
        if settings.epochs == 0:
            model = self.untrained
            if self.init_checkpoint:
                weights = torch.load(io.BytesIO(read_bytes(self.init_checkpoint)), map_location="cpu",
                                     weights_only=False)["model"]
                model.load_state_dict(weights)  # Fast-SCNN's weights do not depend on the input size
            model.eval()
            return model, [], None
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
                          amp=settings.amp, num_workers=settings.num_workers, progress=False, device=trial_device())
        sources = {s: open_split(settings.data, s, seed=settings.data_seed, limit=settings.limit) for s in ("train", "val")}
        result = train(self.spec, sources["train"], sources["val"], cfg, out_dir=ckpt_dir, on_epoch=on_epoch,
                       resume=resume)
        return result.model, result.history, result.gpu_max_memory_mib

    def finalize(self, model: Any, history: list[Any], gpu_mib: float | None, latency: float) -> None:
        """3. The deployed artifact is the measured one: export, test IoU via onnxruntime, benchmark;
        the final report (and the results cache, so the configuration never trains again)."""
        from ray import tune

        from raysearch.training.evaluate import OnnxPredictor, evaluate

        settings, spec, final = self.settings, self.spec, self.final
        (final / "overlays").mkdir(parents=True)
        onnx_path = _export(model, final / obj.MODEL_FILE, settings, self.calibration)
        test = open_split(settings.data, "test", seed=settings.data_seed, limit=settings.limit)

        def keep(i: int, image: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> None:
            if i < settings.overlays:
                write_overlay(final / "overlays" / f"{i:02d}_{test.stems[i]}.png", image, gt, pred)

        predictor = OnnxPredictor(onnx_path, threads=1)
        ev = evaluate(predictor, test, input_hw=spec.input_hw, in_channels=spec.in_channels,
                      logit_threshold=settings.logit_threshold, on_prediction=keep)
        with open_farm(settings.bench.farm, settings.bench.device_class) as farm:  # one for both calls
            bench = measure(onnx_path, settings.bench, farm)
            on_device = self._device_iou(onnx_path, test, ev, farm) if settings.device_iou_of(spec) else {}
        if (self.ckpt_dir / obj.BEST_WEIGHTS).is_file():  # the weights travel with the result (stage 1 reuses them)
            shutil.copy(self.ckpt_dir / obj.BEST_WEIGHTS, final / obj.BEST_WEIGHTS)
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
            latency_cv=bench.result.latency_cv, **self.shape, **bench.precision_metrics(),
            **({obj.GPU_MAX_MEMORY_MIB: gpu_mib} if gpu_mib is not None else {}))
        final_metrics.update(on_device)  # the device's IoU, where it computed one, is the objective
        if self.results is not None:  # the artifacts first: a result in the cache always has them
            publish_tree(final, f"{self.results.root}/{self.result_key}")  # best.pt included: int8 and stage 1 start from it
            self.results.put(self.result_key, {**final_metrics, RAN_AS: self.trial_id})
        tune.report(final_metrics, checkpoint=tune.Checkpoint.from_directory(str(final)))
        if self.results is not None and self.state is not None:  # the cached result (with best.pt) stands for it now
            self.state.remove()


    def _device_iou(self, onnx_path: Path, test: Any, on_host: Any, farm: BenchFarm) -> dict[str, float]:
        """The test IoU as the device computes it (benchd Predict on a device of the latency's class),
        beside the host's: these metrics replace the objective's IoU with the device's."""
        from raysearch.search.device_iou import evaluate_on_device

        bench = self.settings.bench
        cmp = evaluate_on_device(onnx_path, test, farm, device_class=bench.device_class, on_host=on_host,
                                 logit_threshold=self.settings.logit_threshold, timeout_s=bench.timeout_s)
        if cmp.disagrees():
            log.warning("%s: the device's test IoU %.4f differs from the host's %.4f (largest per-image gap %.4f); "
                        "ranked by the device's", self.spec.name, cmp.device.iou, cmp.host.iou, cmp.max_iou_gap)
        return {obj.IOU.name: cmp.device.iou, obj.IOU_DEVICE: cmp.device.iou, obj.IOU_HOST: cmp.host.iou,
                obj.IOU_DEVICE_GAP: cmp.iou_gap, obj.IOU_DEVICE_MAX_IMAGE_GAP: cmp.max_iou_gap,
                obj.PIXEL_DISAGREEMENT_MAX: cmp.max_pixel_disagreement,
                obj.DEVICE_IOU_DISAGREES: float(cmp.disagrees())}


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


def calibration_for(spec: ModelSpec, settings: TrialSettings) -> Callable[[], list[Any]]:
    """The int8 calibration inputs of ``spec`` (validation images fed as at inference), read when
    first called: an fp32 export never reads them."""
    def calibration() -> list[Any]:
        from raysearch.training.quantize import calibration_inputs

        return calibration_inputs(open_split(settings.data, "val", seed=settings.data_seed, limit=settings.limit), spec)

    return calibration


def untrained_latency(spec: ModelSpec, settings: TrialSettings, work: Path, calibration: Callable[[], list[Any]],
                      model: torch.nn.Module | None = None) -> Measurement:
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

    path = _export(model if model is not None else build_model(spec), work / "untrained.onnx", settings, calibration)
    measured = measure(path, settings.bench)
    # the spec and the timing key beside the reply: what the next search's latency model is fitted on
    cache.put(key, {**measured.to_dict(), CACHE_SPEC: spec.to_dict(), CACHE_TIMING: settings.bench.timing_key()})
    return measured


CACHE_SPEC, CACHE_TIMING = "spec", "timing_key"  # keys of a latency cache document besides the reply


def cached_latencies(cache: str) -> dict[tuple[str, str], list[tuple[ModelSpec, float]]]:
    """What a latency cache holds, by (device class, timing key): (spec, ms) of each configuration
    (documents written before the cache kept the spec are left out)."""
    out: dict[tuple[str, str], list[tuple[ModelSpec, float]]] = {}
    for doc in DocumentStore(cache).documents():
        try:
            spec, ms = ModelSpec.from_dict(doc[CACHE_SPEC]), float(doc[obj.LATENCY_MS.name])
            group = (str(doc[obj.TAG_DEVICE_CLASS]), str(doc[CACHE_TIMING]))
        except (KeyError, TypeError, ValueError):
            continue
        out.setdefault(group, []).append((spec, ms))
    return out


def latency_oracle(settings: TrialSettings) -> LatencyOracle:
    """Latency-first's latencies without a sweep: a latency model of the device class, fitted on what
    the latency cache already holds, that measures on the farm (through the cache) what it needs."""
    from raysearch.search.latency_first import LatencyOracle
    from raysearch.search.latency_model import class_model

    model = class_model(settings.bench.device_class, settings.bench.timing_key(), cached_latencies(settings.latency_cache))
    if model.reference is not None:
        log.info("latency model of %r: %d configurations of its own measured by earlier searches; until it knows "
                 "more, it also reads the latencies of %r (%d measured) from the latency cache",
                 model.device_class, len(model), model.reference.device_class, len(model.reference))
    elif len(model):
        log.info("latency model of %r: %d configurations measured by earlier searches (the latency cache)",
                 model.device_class, len(model))

    def measure_configs(configs: list[dict[str, Any]]) -> list[float]:
        return measure_configs_of(configs, settings, "latency measured for the search")

    return LatencyOracle(model, settings.spec_for, measure_configs)


def measure_configs_of(configs: list[dict[str, Any]], settings: TrialSettings, what: str) -> list[float]:
    """Each configuration's untrained latency (the cache's, or measured and cached), a log line each."""
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="raysearch-latency-") as work:
        for n, config in enumerate(configs, 1):
            spec = settings.spec_for(config)
            out.append(untrained_latency(spec, settings, Path(work), calibration_for(spec, settings)).latency_ms)
            log.info("%s %d/%d: %s %.3f ms", what, n, len(configs), spec.name, out[-1])
    return out


def sweep_latencies(configs: list[dict[str, Any]], settings: TrialSettings) -> dict[str, float]:
    """Every configuration's latency before any training (`--sampler latency-first`), as
    `raysearch.search.latency_first.config_key` -> ms; the trials then find theirs in the latency cache."""
    from raysearch.search.latency_first import config_key

    t0 = time.time()
    out = dict(zip(map(config_key, configs), measure_configs_of(configs, settings, "latency sweep")))
    log.info("latency sweep: %d configurations in %.0f s", len(configs), time.time() - t0)
    return out


def _export(model: torch.nn.Module, path: Path, settings: TrialSettings, calibration: Callable[[], list[Any]]) -> Path:
    """The deployable ONNX file of ``model``: the fp32 export, or with ``precision=int8`` that
    export quantized, calibrated on ``calibration()`` (validation images fed as at inference)."""
    from raysearch.training.export import export_onnx

    if spec_of(model).precision == "fp32":
        return export_onnx(model, path, exporter=settings.exporter).path
    from raysearch.training.quantize import quantize_int8

    fp32 = export_onnx(model, path.with_name(path.stem + "-fp32.onnx"), exporter=settings.exporter).path
    quantize_int8(fp32, path, calibration())
    fp32.unlink()
    return path
