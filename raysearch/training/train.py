"""The study's training recipe, everything configurable.

BCE-with-logits, Adam (lr 0.01, no weight decay), batch 8 with the last partial batch kept,
polynomial decay set once per epoch (power 0.9, towards 1e-4), best epoch = lowest validation loss;
fp32 on CUDA when present, else on the CPU (mixed precision only when asked: ``amp=True``).
``on_epoch`` sees every epoch's metrics (the search reports through it) and may stop training by
returning False. Checkpoints: ``best.pt`` (weights + spec) and ``last.pt`` (weights, optimizer,
epoch: ``resume=True`` continues from it).
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from raysearch.data.dataset import SegDataset, seed_worker
from raysearch.data.sources import SegSource
from raysearch.models import ModelSpec, build_model
from raysearch.records.names import BEST_WEIGHTS, LAST_WEIGHTS
from raysearch.storage import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 400
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 0.0
    poly_power: float = 0.9
    min_lr: float = 1e-4
    seed: int = 0
    num_workers: int = 0  # decoded images are cached, so workers mostly pay off on GPUs
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    amp: bool = False  # mixed precision (CUDA only): it changes the numbers, so it is asked for, never implied
    train_scale: float | None = None  # resize factor before cropping; None = input / 512
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr={self.min_lr} must be in [0, lr={self.lr}]")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers} must be >= 0")

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 0-based ``epoch``, as the study set it once per epoch e = 1..E:
        (lr - min_lr) * (1 - e / E) ** power + min_lr (so the last epoch runs at min_lr)."""
        e = epoch + 1
        return (self.lr - self.min_lr) * (1 - e / self.epochs) ** self.poly_power + self.min_lr


@dataclass
class EpochMetrics:
    epoch: int  # 1-based
    lr: float
    train_loss: float
    val_loss: float
    val_iou: float  # mean per-image foreground IoU on the validation crops
    seconds: float
    is_best: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def trained_history(folder: Path) -> list[EpochMetrics]:
    """The epochs trained so far by a training that saved ``folder/last.pt`` (what a resume continues)."""
    ckpt = torch.load(folder / LAST_WEIGHTS, map_location="cpu", weights_only=False)
    return [EpochMetrics(**h) for h in ckpt["history"]]


@dataclass
class TrainResult:
    model: torch.nn.Module  # with the best epoch's weights, on the CPU, in eval mode
    best_epoch: int
    best_val_loss: float
    history: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False
    seconds: float = 0.0
    gpu_max_memory_mib: float | None = None  # on CUDA: the peak torch allocated (what a GPU share must hold)

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "epochs_run": len(self.history), "stopped_early": self.stopped_early, "train_seconds": self.seconds}


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """torch.save, whole or not at all: a resume never meets half a last.pt (a full disk, a kill)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def cuda_report() -> str:
    """What torch says of CUDA in this process, for a message about a GPU it cannot use."""
    built = torch.version.cuda
    return (f"torch {torch.__version__} " + (f"built with CUDA {built}" if built else "built without CUDA (a CPU wheel)")
            + f", {torch.cuda.device_count()} CUDA device(s) visible "
            + f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA but torch sees no CUDA device")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batch_iou(logits: torch.Tensor, target: torch.Tensor) -> list[float]:
    pred, gt = logits[:, 0] > 0, target[:, 0] > 0.5
    inter = (pred & gt).flatten(1).sum(1).float()
    union = (pred | gt).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()


def train(spec: ModelSpec, train_source: SegSource, val_source: SegSource, cfg: TrainConfig = TrainConfig(), *,
          out_dir: str | Path | None = None, on_epoch: Callable[[EpochMetrics], bool | None] | None = None,
          resume: bool = False) -> TrainResult:
    """Train a fresh ``build_model(spec)``; returns the best epoch's model (lowest val loss)."""
    if spec.num_classes != 1:
        raise ValueError(f"num_classes={spec.num_classes}: the study's recipe (BCE with one logit) needs num_classes=1")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)

    train_ds = SegDataset(train_source, spec, "train", scale=cfg.train_scale, seed=cfg.seed, progress=cfg.progress)
    val_ds = SegDataset(val_source, spec, "val", scale=cfg.train_scale, progress=cfg.progress)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader_kw: dict[str, Any] = dict(num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                     persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker)
    # the study kept the last partial batch (38 steps over 300 images); only a last batch of one
    # image is dropped, since batch norm cannot train on a single 1x1 pooled feature
    train_dl = DataLoader(train_ds, cfg.batch_size, shuffle=True,
                          drop_last=len(train_ds) % cfg.batch_size == 1 and len(train_ds) > 1, generator=gen, **loader_kw)
    val_dl = DataLoader(val_ds, cfg.batch_size, shuffle=False, **loader_kw)

    model = build_model(spec).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[EpochMetrics] = []
    best_state, best_epoch, best_loss = None, 0, float("inf")
    start_epoch = 0
    if resume and out and (out / LAST_WEIGHTS).is_file():
        ckpt = torch.load(out / LAST_WEIGHTS, map_location=device, weights_only=False)
        if ckpt["spec"] != spec.to_dict():
            raise ValueError(f"{out / LAST_WEIGHTS} was trained for {ckpt['spec']}, not {spec.to_dict()}")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, best_epoch, best_loss = ckpt["epoch"], ckpt["best_epoch"], ckpt["best_val_loss"]
        history = [EpochMetrics(**h) for h in ckpt["history"]]
        best_state = torch.load(out / BEST_WEIGHTS, map_location="cpu", weights_only=False)["model"]
        log.info("resuming %s at epoch %d of %d", spec.name, start_epoch + 1, cfg.epochs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    stopped = False
    bar = tqdm(range(start_epoch, cfg.epochs), desc=f"training {spec.name}", disable=not cfg.progress,
               initial=start_epoch, total=cfg.epochs, unit="epoch")
    for epoch in bar:
        t0 = time.perf_counter()
        lr = cfg.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        total, count = 0.0, 0
        for x, y in train_dl:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                loss = F.binary_cross_entropy_with_logits(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() * x.shape[0]
            count += x.shape[0]
        train_loss = total / max(count, 1)

        model.eval()
        vtotal, vcount, ious = 0.0, 0, []
        with torch.inference_mode(), torch.autocast(device.type, enabled=use_amp):
            for x, y in val_dl:
                x, y = x.to(device), y.to(device)
                logits = model(x).float()
                vtotal += F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item() / y[0].numel()
                vcount += x.shape[0]
                ious += _batch_iou(logits, y)
        val_loss = vtotal / max(vcount, 1)
        m = EpochMetrics(epoch + 1, lr, train_loss, val_loss, float(np.mean(ious)), time.perf_counter() - t0)
        if val_loss < best_loss:
            m.is_best = True
            best_loss, best_epoch = val_loss, epoch + 1
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            if out:
                save_checkpoint({"spec": spec.to_dict(), "model": best_state, "epoch": best_epoch,
                                 "val_loss": val_loss}, out / BEST_WEIGHTS)
        history.append(m)
        if out:
            save_checkpoint({"spec": spec.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "epoch": epoch + 1, "best_epoch": best_epoch, "best_val_loss": best_loss,
                             "history": [h.to_dict() for h in history]}, out / LAST_WEIGHTS)
        bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_iou=f"{m.val_iou:.4f}")
        log.debug("epoch %d: %s", epoch + 1, json.dumps(m.to_dict()))
        if on_epoch is not None and on_epoch(m) is False:
            stopped = epoch + 1 < cfg.epochs
            break
    bar.close()

    gpu_mib = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    model = model.cpu().eval()
    if best_state is not None:
        model.load_state_dict(best_state)
    result = TrainResult(model, best_epoch, best_loss, history, stopped, time.perf_counter() - t_start, gpu_mib)
    log.info("trained %s: best epoch %d (val loss %.4f) of %d run, %.1f s", spec.name, best_epoch, best_loss,
             len(history), result.seconds)
    return result


def load_checkpoint(path: str | Path) -> torch.nn.Module:
    """A model rebuilt from its spec and loaded with a ``best.pt``/``last.pt`` checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or "spec" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path}: not a raysearch checkpoint (expected keys 'spec' and 'model')")
    model = build_model(ModelSpec.from_dict(ckpt["spec"], strict=True))
    model.load_state_dict(ckpt["model"])
    return model.eval()
