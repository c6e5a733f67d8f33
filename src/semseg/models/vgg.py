"""VGG16 encoder in torchvision's parameter layout, with fc6/fc7 as convolutions.

Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015. The convolutional trunk keeps torchvision's ``features.N`` indices so that
``torchvision.models.vgg16`` ImageNet weights load unchanged; the classifier's first two
fully connected layers become a 7x7 convolution (fc6) and a 1x1 convolution (fc7) as in
Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError

# torchvision's configuration "D": channels per conv layer, "M" = 2x2 max pooling.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
FC_CHANNELS = 4096


@dataclass(frozen=True)
class EncoderFeatures:
    """Feature maps an FCN decoder taps: pool3 (stride 8), pool4 (stride 16), fc7 (stride 32)."""

    pool3: Tensor
    pool4: Tensor
    fc7: Tensor


def scaled(channels: int, width_mult: float) -> int:
    """Channel count scaled by ``width_mult``, at least 4."""
    return max(4, int(round(channels * width_mult)))


def make_vgg16_features(width_mult: float = 1.0, batch_norm: bool = False) -> nn.Sequential:
    """The VGG16 convolutional trunk with torchvision's module indices (for ``width_mult=1``)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = scaled(int(item), width_mult)
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG16Encoder(nn.Module):
    """VGG16 trunk plus fc6 (7x7 conv) and fc7 (1x1 conv), each followed by ReLU and dropout.

    Input ``(N, 3, H, W)`` with H and W multiples of 32; outputs pool3 ``(N, 256w, H/8, W/8)``,
    pool4 ``(N, 512w, H/16, W/16)`` and fc7 ``(N, 4096w, H/32, W/32)`` where ``w`` is the
    width multiplier. fc6 is padded by 3 so that it keeps the stride-32 grid.

    Args:
        keep_prob: probability of keeping an activation in the dropout after fc6 and fc7
            (the reference exercise's knob; ``1.0`` disables dropout).
        width_mult: channel multiplier; ``1.0`` is VGG16 proper (ImageNet weights load only then).
        batch_norm: BN after every convolution of the trunk (torchvision's ``vgg16_bn`` layout).
    """

    def __init__(
        self, keep_prob: float = 0.5, width_mult: float = 1.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if not 0.0 < keep_prob <= 1.0:
            raise SemsegError(f"keep_prob must be in (0, 1], got {keep_prob}")
        if width_mult <= 0:
            raise SemsegError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        self.features = make_vgg16_features(width_mult, batch_norm=batch_norm)
        conv5_channels = scaled(512, width_mult)
        fc_channels = scaled(FC_CHANNELS, width_mult)
        self.fc6 = nn.Conv2d(conv5_channels, fc_channels, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(p=1.0 - keep_prob)
        self.drop7 = nn.Dropout(p=1.0 - keep_prob)
        self.pool3_channels = scaled(256, width_mult)
        self.pool4_channels = conv5_channels
        self.fc7_channels = fc_channels
        # Indices of the pooling layers whose outputs are pool3 and pool4 (torchvision layout).
        pool_indices = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._pool3_index, self._pool4_index = pool_indices[2], pool_indices[3]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (fan-out), as torchvision's VGG: keeps activations from shrinking
        through 15 layers, which matters when training from scratch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> EncoderFeatures:
        pool3 = pool4 = x
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == self._pool3_index:
                pool3 = x
            elif index == self._pool4_index:
                pool4 = x
        x = self.drop6(self.relu(self.fc6(x)))
        x = self.drop7(self.relu(self.fc7(x)))
        return EncoderFeatures(pool3=pool3, pool4=pool4, fc7=x)

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load a ``torchvision.models.vgg16`` state dict, reshaping fc6/fc7 into convolutions."""
        if self.width_mult != 1.0:
            raise SemsegError("ImageNet VGG16 weights need width_mult 1.0")
        try:
            features = {
                key.removeprefix("features."): value
                for key, value in state_dict.items()
                if key.startswith("features.")
            }
            self.features.load_state_dict(features)
            fc6_weight = state_dict["classifier.0.weight"]
            fc7_weight = state_dict["classifier.3.weight"]
            with torch.no_grad():
                self.fc6.weight.copy_(fc6_weight.reshape(self.fc6.weight.shape))
                self.fc6.bias.copy_(state_dict["classifier.0.bias"])
                self.fc7.weight.copy_(fc7_weight.reshape(self.fc7.weight.shape))
                self.fc7.bias.copy_(state_dict["classifier.3.bias"])
        except (KeyError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise SemsegError(f"not a torchvision VGG16 state dict: {first_line}") from error


def imagenet_vgg16_state_dict() -> dict[str, Tensor]:
    """torchvision's ImageNet VGG16 weights through its weights API (downloads once, cached)."""
    from torchvision.models import VGG16_Weights

    try:
        return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as error:  # network errors come in many types (URLError, OSError, ...)
        raise SemsegError(
            "could not fetch torchvision's ImageNet VGG16 weights (no network?); "
            "download them on a connected machine and pass --backbone-weights PATH"
        ) from error


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict saved with ``torch.save``, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise SemsegError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SemsegError(f"cannot read backbone weights {path}: not a torch state dict") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SemsegError(f"backbone weights {path} do not hold a state dict")
    return state
