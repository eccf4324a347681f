"""Model zoo: the frozen `ModelSpec`, the family registry and `build_model`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from raysearch.models import builtin  # noqa: F401  (registers the built-in families)
from raysearch.models.registry import ModelFamily, families, get_family, register_family
from raysearch.models.spec import ModelSpec, parse_hw

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

__all__ = ["ModelSpec", "ModelFamily", "build_model", "families", "get_family", "parse_hw", "register_family", "spec_of"]


def build_model(spec: ModelSpec) -> "nn.Module":
    """Build the network a spec describes; the spec is attached as ``model.spec``."""
    model = get_family(spec.arch).build(spec)
    model.spec = spec  # type: ignore[assignment]  # the one place a model's defining config is read back from
    return model


def spec_of(model: "nn.Module") -> ModelSpec:
    """The spec `build_model` attached to ``model`` (typed: torch types module attributes loosely)."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"{type(model).__name__} was not built by build_model: it has no ModelSpec")
    return spec
