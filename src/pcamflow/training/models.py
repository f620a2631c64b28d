"""Model registry: config name -> constructor of a 2-class classifier for 96 x 96 x 3 tiles."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pcamflow.config import validate_training
from pcamflow.constants import TILE_SHAPE
from pcamflow.errors import PcamflowError

NUM_CLASSES = 2
# the `training:` settings that shape a model
MODEL_KEYS = ("mlp_hidden", "dropout", "cnn_width", "pretrained")


def mlp(hidden: list[int], dropout: float, **_) -> nn.Module:
    """The course baseline: flatten, hidden layers with ReLU and dropout, 2 logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = TILE_SHAPE[0] * TILE_SHAPE[1] * TILE_SHAPE[2]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Four conv blocks (96 -> 6 px), then pooling to 3 x 3, not 1 x 1: PCAM's label depends on
    where tumour lies (the centre region), so the classifier keeps a coarse spatial layout."""

    def __init__(self, width: int, dropout: float, **_):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        self.features = nn.Sequential(*(_conv_block(a, b) for a, b in zip(chans, chans[1:])))
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1] * 9, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def cnn(width: int, dropout: float, **_) -> nn.Module:
    return SmallCNN(width=width, dropout=dropout)


def _resnet(name: str, pretrained: bool, **_) -> nn.Module:
    import torchvision

    if pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except Exception as exc:  # the hub download fails offline
            raise PcamflowError(
                f"model '{name}': pretrained weights are not available offline "
                f"({type(exc).__name__}); set training.pretrained: false or place "
                f"{weights.url.rsplit('/', 1)[-1]} in $TORCH_HOME/hub/checkpoints"
            ) from None
    else:
        model = torchvision.models.get_model(name, weights=None)
    # 96 px tiles: a 3x3 stride-1 stem without the max-pool keeps a 12 x 12 map before the
    # last stage instead of 3 x 3.
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    return model


def resnet18(pretrained: bool, **_) -> nn.Module:
    return _resnet("resnet18", pretrained)


def resnet50(pretrained: bool, **_) -> nn.Module:
    return _resnet("resnet50", pretrained)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def build_model(name: str, training: dict | None = None) -> nn.Module:
    """Build a registered model from the `training:` settings (MODEL_KEYS; the others are ignored).

    A missing key takes the schema's default, so a model is the same whoever builds it.
    """
    if name not in MODELS:
        raise PcamflowError(f"model '{name}': unknown (choose one of {', '.join(MODELS)})")
    given = {key: value for key, value in (training or {}).items() if key in MODEL_KEYS}
    t = validate_training(given)
    return MODELS[name](
        hidden=t["mlp_hidden"], dropout=t["dropout"], width=t["cnn_width"], pretrained=t["pretrained"]
    )


def build_architecture(name: str, training: dict | None = None) -> nn.Module:
    """build_model without pretrained weights, for weights loaded next (a checkpoint) or for counting:
    only training starts from ImageNet weights; loading them elsewhere is wasted (and fails offline)."""
    return build_model(name, {**(training or {}), "pretrained": False})
