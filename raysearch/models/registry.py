"""A small registry of model families: a name, the knobs it reads from the spec, a builder.

Fast-SCNN, BiSeNetV2 and DeepLabV3 register themselves here exactly like a user's own family
would (``register_family``), so the search code never names an architecture. The imports go one
way: registry <- spec, registry <- builtin, and the package imports all three (so the built-in
families are registered whenever any part of ``raysearch.models`` is imported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    import torch.nn as nn

# A family's functions take a `raysearch.models.spec.ModelSpec`; it is typed `Any` here because the
# spec imports this registry (to check its arch and knobs) and the imports go one way.
ModelSpecT = Any


def _no_check(spec: ModelSpecT) -> None:
    return None


@dataclass(frozen=True)
class ModelFamily:
    """name: the ``arch`` value; build: spec -> nn.Module returning logits (N, classes, H, W);
    knobs: the spec fields this family reads (beyond input_hw/in_channels/num_classes), in the
    order an expert would tune them; validate: extra per-family checks raising ValueError.

    For `raysearch optimize`: ``baseline`` holds the full-size model's value of every knob (and
    optionally ``input_hw``), ``choices`` the values worth trying per knob, from the baseline's
    down to the cheapest; ``resolutions`` the input sizes to try, largest first."""

    name: str
    build: Callable[[ModelSpecT], "nn.Module"]
    knobs: tuple[str, ...] = ()
    validate: Callable[[ModelSpecT], None] = field(default=_no_check)
    description: str = ""
    baseline: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    resolutions: tuple[int, ...] = (512, 256, 224, 192, 160, 128, 96)

    def __post_init__(self) -> None:
        for k in (*self.baseline, *self.choices):
            if k not in (*self.knobs, "input_hw"):
                raise ValueError(f"model family {self.name!r}: {k!r} is in baseline/choices but not one of its "
                                 f"knobs {self.knobs}")
        for k, values in self.choices.items():
            if not values:
                raise ValueError(f"model family {self.name!r}: choices[{k!r}] is empty")


_FAMILIES: dict[str, ModelFamily] = {}
_BUILTIN: set[str] = set()  # names registered by raysearch.models.builtin


def register_family(family: ModelFamily, *, replace: bool = False, builtin: bool = False) -> ModelFamily:
    key = family.name.lower()
    if key in _FAMILIES and not replace:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[key] = family
    if builtin:
        _BUILTIN.add(key)
    return family


def get_family(name: str) -> ModelFamily:
    try:
        return _FAMILIES[name.lower()]
    except KeyError:
        raise ValueError(f"arch={name!r} is not a registered model family; known: {sorted(_FAMILIES)}") from None


def families() -> dict[str, ModelFamily]:
    return dict(_FAMILIES)


def user_families() -> tuple[ModelFamily, ...]:
    """The families registered beyond the built-in ones (they must travel to trial processes)."""
    return tuple(f for k, f in _FAMILIES.items() if k not in _BUILTIN)
