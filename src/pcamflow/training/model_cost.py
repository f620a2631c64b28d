"""What a model costs per 96 x 96 tile: forward multiply-accumulates and activation values, counted
on the model pcamflow builds (`pcamflow cost`'s time model and the preflight's costliest point).

torch is imported only when a model is counted, so `pcamflow cost` starts without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pcamflow import constants


@dataclass(frozen=True)
class ModelCost:
    """Forward multiply-accumulates and activation values per 96 x 96 tile."""

    macs: float
    activations: float


@cache
def _model_cost(name: str, training_key: tuple) -> ModelCost:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pcamflow.training.models import build_architecture

    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in training_key}  # lists as in YAML
    model = build_architecture(name, settings).to("meta")  # shapes only: no memory, no compute
    values = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: values.append(out.numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    with FlopCounterMode(display=False) as counter:
        height, width, channels = constants.TILE_SHAPE
        model(torch.empty(1, channels, height, width, device="meta"))
    for hook in hooks:
        hook.remove()
    return ModelCost(macs=counter.get_total_flops() / 2, activations=float(sum(values)))


def model_cost(name: str, training: dict) -> ModelCost:
    """MACs and activations of the model pcamflow builds from these training settings."""
    shaping = [(k, training[k]) for k in ("mlp_hidden", "dropout", "cnn_width") if k in training]
    return _model_cost(name, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in shaping))
