"""Model summaries in the reference study's convention (torchinfo's), computed with forward hooks.

* ``params_total``: every parameter of the model, modules the forward skips included (the study's
  figure: Fast-SCNN's pyramid pooling counts even when ``pp=0``);
* ``params_executed``: parameters of the modules the forward pass actually calls (honest figure);
* ``macs``: per call of a leaf module, convolutions as (weights + bias) x output positions,
  other parameterized layers (BN: 2C) as their parameter count, x batch; a module called
  several times (Fast-SCNN's shared pyramid-pooling conv) counts every call;
* ``input_mb``: bytes of one float32 input / 1e6;
* ``fwd_pass_mb``: torchinfo's "forward/backward pass size": output bytes of every parameterized
  leaf call, x2 for gradients, / 1e6.

Unlike the study's tool, a module that is built but not called contributes no MACs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from raysearch.models import ModelSpec, build_model, spec_of

_BYTES_FP32 = 4


@dataclass(frozen=True)
class ModelSummary:
    params_total: int
    params_executed: int
    macs: int
    input_mb: float
    fwd_pass_mb: float

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def summarize(spec_or_model: ModelSpec | nn.Module) -> ModelSummary:
    """Summary of a spec (the model is built) or of a built model carrying ``.spec``."""
    model = build_model(spec_or_model) if isinstance(spec_or_model, ModelSpec) else spec_or_model
    spec = spec_of(model)
    macs = 0
    out_bytes = 0
    executed: set[int] = set()
    executed_params = 0

    def hook(module: nn.Module, _inp, out) -> None:
        nonlocal macs, out_bytes, executed_params
        own = list(module.parameters(recurse=False))
        n_own = sum(p.numel() for p in own)
        if id(module) not in executed:
            executed.add(id(module))
            executed_params += n_own
        if list(module.children()) or not isinstance(out, torch.Tensor):
            return
        batch = out.shape[0]
        if isinstance(module, nn.modules.conv._ConvNd):
            macs += n_own * batch * math.prod(out.shape[2:])
        else:
            macs += n_own * batch
        if n_own:
            out_bytes += 2 * out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(spec.input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return ModelSummary(
        params_total=sum(p.numel() for p in model.parameters()),
        params_executed=executed_params,
        macs=macs,
        input_mb=round(torch.Size(spec.input_shape).numel() * _BYTES_FP32 / 1e6, 2),
        fwd_pass_mb=round(out_bytes / 1e6, 2),
    )
