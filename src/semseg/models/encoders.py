"""Encoders for the FCN decoders, all from torchvision so that their ImageNet weights load.

Every encoder maps an ImageNet-normalised ``(N, 3, H, W)`` batch (H and W multiples of 32) to
:class:`EncoderFeatures` — the maps at stride 8, 16 and 32 that FCN-8s/16s/32s tap — and
describes its stages like timm's ``feature_info``: one :class:`StageInfo` (module name, channels,
stride) per stage, so ``pool3_channels``/``pool4_channels``/``fc7_channels`` (the channels of the
stride 8/16/32 taps) come from that table.

=====================  ========================================  ==================  ======
name                   stride 8 / 16 / 32 taps                   channels            BN
=====================  ========================================  ==================  ======
``vgg16``              pool3 / pool4 / fc7 (fc6, fc7 as convs)   256 / 512 / 4096    no
``vgg16_bn``           pool3 / pool4 / fc7 (fc6, fc7 as convs)   256 / 512 / 4096    yes
``resnet18``           layer2 / layer3 / layer4                  128 / 256 / 512     yes
``resnet34``           layer2 / layer3 / layer4                  128 / 256 / 512     yes
``resnet50``           layer2 / layer3 / layer4                  512 / 1024 / 2048   yes
``mobilenet_v3_large`` features.6 / features.12 / features.16    40 / 112 / 960      yes
=====================  ========================================  ==================  ======

Parameter names are torchvision's (``features.N``, ``conv1``, ``layer1.0.conv1``, ...), so
``pretrained=True`` loads torchvision's ImageNet weights through its weights API (downloading
once; a :class:`SemsegError` says what to do when there is no network) and
``backbone_weights=PATH`` loads a local ``torch.save``-d torchvision state dict of the same
architecture (the classification head is ignored). ``width_mult`` scales the VGG encoders only
(ImageNet weights need 1.0); the others exist at width 1 only. ``keep_prob`` is the dropout keep
probability after fc6 and fc7 (VGG) or on the stride-32 map (the others). From scratch every
convolution is He initialised (fan-out) and BN starts as the identity, as in torchvision.

Papers: VGG16, Simonyan & Zisserman, ICLR 2015; ResNet, He, Zhang, Ren & Sun, "Deep Residual
Learning for Image Recognition", CVPR 2016; MobileNetV3, Howard et al., "Searching for
MobileNetV3", ICCV 2019.

This is the one backbone registry: :func:`register_encoder` records each name with its
torchvision ImageNet weights, :func:`build_encoder` builds one for the FCN decoders, and
:func:`backbone_state_dict` is where every model (SegNet, DeepLab and Dilation included, which
build their own VGG16 trunks) gets its backbone's starting weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

from semseg.errors import SemsegError
from semseg.models.vgg import (
    FC_CHANNELS,
    copy_into,
    fc_weight,
    he_init_,
    load_trunk,
    scaled,
    vgg16_trunk,
)
from semseg.models.weights import StateDict, starting_weights

TAP_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class EncoderFeatures:
    """Feature maps an FCN decoder taps: stride 8 (``pool3``), 16 (``pool4``) and 32 (``fc7``),
    named after VGG16's layers whatever the encoder."""

    pool3: Tensor
    pool4: Tensor
    fc7: Tensor


@dataclass(frozen=True)
class StageInfo:
    """One stage of an encoder: the module whose output it is, its channels and its stride."""

    module: str
    channels: int
    stride: int


class Encoder(nn.Module):
    """Base class: ``forward_stages`` returns one map per entry of ``feature_info``.

    ``forward`` returns the last stage at stride 8, 16 and 32 as :class:`EncoderFeatures`
    (named ``pool3``, ``pool4``, ``fc7`` after VGG16's, whatever the encoder).
    """

    feature_info: tuple[StageInfo, ...] = ()

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> EncoderFeatures:
        return features_at_taps(self.feature_info, self.forward_stages(x))

    @property
    def pool3_channels(self) -> int:
        return tap(self.feature_info, 8).channels

    @property
    def pool4_channels(self) -> int:
        return tap(self.feature_info, 16).channels

    @property
    def fc7_channels(self) -> int:
        return tap(self.feature_info, 32).channels

    def load_torchvision_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load a torchvision state dict of this architecture (its classifier is ignored)."""
        ours = self.state_dict()
        missing = [key for key in ours if key not in state_dict]
        if missing:
            raise SemsegError(
                f"not a torchvision {self.arch} state dict: {len(missing)} missing key(s), "
                f"first {missing[0]!r}"
            )
        try:
            self.load_state_dict({key: state_dict[key] for key in ours})
        except RuntimeError as error:
            text = str(error).strip().splitlines()
            raise SemsegError(
                f"not a torchvision {self.arch} state dict: {text[-1].strip() if text else error}"
            ) from error

    @property
    def arch(self) -> str:
        return type(self).__name__


def tap(feature_info: tuple[StageInfo, ...], stride: int) -> StageInfo:
    """The last stage at ``stride``."""
    matching = [info for info in feature_info if info.stride == stride]
    if not matching:
        raise ValueError(f"encoder has no stage at stride {stride}")
    return matching[-1]


def features_at_taps(feature_info: tuple[StageInfo, ...], stages: list[Tensor]) -> EncoderFeatures:
    by_stride = {info.stride: index for index, info in enumerate(feature_info)}  # last one wins
    pool3, pool4, fc7 = (stages[by_stride[stride]] for stride in TAP_STRIDES)
    return EncoderFeatures(pool3=pool3, pool4=pool4, fc7=fc7)


# --- VGG16 and VGG16-BN: the FCN paper's encoder (fc6/fc7 as convolutions) -------------------


class VGGEncoder(Encoder):
    """VGG16 (Simonyan & Zisserman, ICLR 2015) with fc6/fc7 as convolutions (Long et al., CVPR
    2015), optionally with BN after every convolution of the trunk (torchvision's ``vgg16_bn``).

    The trunk is :func:`semseg.models.vgg.vgg16_trunk` (``features.N`` as torchvision's); fc6 is a
    7x7 convolution padded by 3 (it keeps the stride-32 grid) and fc7 a 1x1 convolution, each
    followed by ReLU and dropout (``1 - keep_prob``), so torchvision's classifier weights load
    reshaped. Input ``(N, 3, H, W)`` with H and W multiples of 32; stages pool1..pool5 (strides
    2..32) and fc7 (stride 32, ``4096w`` channels); taps pool3 ``(N, 256w, H/8, W/8)``, pool4
    ``(N, 512w, H/16, W/16)`` and fc7 ``(N, 4096w, H/32, W/32)``, ``w`` the width multiplier
    (``1.0`` is VGG16 proper; ImageNet weights load only then). Every convolution is He
    initialised (fan-out).
    """

    def __init__(
        self, keep_prob: float = 0.5, width_mult: float = 1.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.width_mult = width_mult
        self.batch_norm = batch_norm
        self.features = vgg16_trunk(width_mult, batch_norm=batch_norm, he_init=False)
        conv5_channels = scaled(512, width_mult)
        fc_channels = scaled(FC_CHANNELS, width_mult)
        self.fc6 = nn.Conv2d(conv5_channels, fc_channels, kernel_size=7, padding=3)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(p=1.0 - keep_prob)
        self.drop7 = nn.Dropout(p=1.0 - keep_prob)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                he_init_(module)
        stages: list[StageInfo] = []
        channels = 3
        for index, module in enumerate(self.features):
            if isinstance(module, nn.Conv2d):
                channels = module.out_channels
            if isinstance(module, nn.MaxPool2d):
                stages.append(StageInfo(f"features.{index}", channels, 2 ** (len(stages) + 1)))
        stages.append(StageInfo("fc7", self.fc7.out_channels, 32))
        self.feature_info = tuple(stages)
        self._pool_indices = tuple(int(info.module.split(".")[1]) for info in stages[:-1])

    @property
    def arch(self) -> str:
        return "VGG16-BN" if self.batch_norm else "VGG16"

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stages = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._pool_indices:
                stages.append(x)
        stages.append(self.fc_layers(x))
        return stages

    def forward(self, x: Tensor) -> EncoderFeatures:
        """The taps only: pool1, pool2 and pool5 are not kept (less memory when predicting)."""
        pool3 = pool4 = x
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == self._pool_indices[2]:
                pool3 = x
            elif index == self._pool_indices[3]:
                pool4 = x
        return EncoderFeatures(pool3=pool3, pool4=pool4, fc7=self.fc_layers(x))

    def fc_layers(self, x: Tensor) -> Tensor:
        """fc6 and fc7 on the pool5 map, each with ReLU and dropout."""
        x = self.drop6(self.relu(self.fc6(x)))
        return self.drop7(self.relu(self.fc7(x)))

    def load_torchvision_state_dict(self, state_dict: StateDict) -> None:
        """Load a torchvision ``vgg16`` (``vgg16_bn``) state dict, fc6/fc7 reshaped to convs."""
        if self.width_mult != 1.0:
            raise SemsegError(f"ImageNet {self.arch} weights need width_mult 1.0")
        load_trunk(self.features, state_dict, self.arch)
        copy_into(self.fc6, *fc_weight(state_dict, 0, self.arch), "fc6", self.arch)
        copy_into(self.fc7, *fc_weight(state_dict, 3, self.arch), "fc7", self.arch)


# --- ResNet-18/34/50 ---------------------------------------------------------------------------


class ResNetEncoder(Encoder):
    """torchvision's ResNet without ``avgpool``/``fc``; taps layer2, layer3, layer4.

    Stages: the stem's ReLU (stride 2, 64 channels), layer1 (4), layer2 (8), layer3 (16), layer4
    (32). A dropout (``1 - keep_prob``) follows layer4.
    """

    def __init__(self, depth: int, keep_prob: float = 1.0) -> None:
        super().__init__()
        import torchvision

        factory = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}.get(
            depth, torchvision.models.resnet50
        )
        net = factory(weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.dropout = nn.Dropout(p=1.0 - keep_prob)
        expansion = 4 if depth >= 50 else 1
        self.feature_info = (
            StageInfo("relu", 64, 2),
            *(StageInfo(f"layer{i + 1}", 64 * 2**i * expansion, 2 ** (i + 2)) for i in range(4)),
        )

    @property
    def arch(self) -> str:
        return f"ResNet-{self.depth}"

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        layer1 = self.layer1(self.maxpool(stem))
        layer2 = self.layer2(layer1)
        layer3 = self.layer3(layer2)
        layer4 = self.dropout(self.layer4(layer3))
        return [stem, layer1, layer2, layer3, layer4]


# --- MobileNetV3-Large -------------------------------------------------------------------------

# torchvision's eps with PyTorch's default momentum (see MobileNetV3Encoder)
MOBILENET_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)


class MobileNetV3Encoder(Encoder):
    """torchvision's MobileNetV3-Large ``features`` (no classifier); taps blocks 6, 12 and 16.

    Stages: the last block at each stride: features.1 (2), 3 (4), 6 (8), 12 (16) and 16 (32,
    the 960-channel 1x1 convolution). A dropout (``1 - keep_prob``) follows features.16.
    BatchNorm momentum is PyTorch's default 0.1, not torchvision's 0.01 (tuned for its long
    ImageNet schedule): over a few hundred steps the 0.01 running statistics lag the weights and
    the model scores far worse in eval mode than in training (BENCHMARKS.md, "CamVid").
    """

    def __init__(self, keep_prob: float = 1.0) -> None:
        super().__init__()
        import torchvision

        self.features = torchvision.models.mobilenet_v3_large(
            weights=None, norm_layer=MOBILENET_NORM
        ).features
        self.dropout = nn.Dropout(p=1.0 - keep_prob)
        stages: list[StageInfo] = []
        stride = 1
        for index, block in enumerate(self.features):
            stride *= block_stride(block)
            info = StageInfo(f"features.{index}", int(block.out_channels), stride)
            if stages and stages[-1].stride == stride:
                stages[-1] = info  # the last block at each stride is the stage's output
            else:
                stages.append(info)
        self.feature_info = tuple(stages)
        self._stage_indices = tuple(int(info.module.split(".")[1]) for info in stages)

    @property
    def arch(self) -> str:
        return "MobileNetV3-Large"

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        stages = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self._stage_indices:
                stages.append(x)
        stages[-1] = self.dropout(stages[-1])
        return stages


def block_stride(block: nn.Module) -> int:
    """Stride of a MobileNetV3 block: the product of its convolutions' strides."""
    stride = 1
    for module in block.modules():
        if isinstance(module, nn.Conv2d):
            stride *= module.stride[0]
    return stride


# --- registry ----------------------------------------------------------------------------------

EncoderFactory = Callable[[float, float], Encoder]


@dataclass(frozen=True)
class EncoderEntry:
    """A registered backbone: ``factory(keep_prob, width_mult)``, the torchvision weights enum
    whose ``IMAGENET1K_V1`` ``pretrained=True`` loads, and the network's name in messages."""

    factory: EncoderFactory
    weights: str
    label: str


_ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(
    name: str, weights: str, label: str
) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: ``factory(keep_prob, width_mult) -> Encoder`` buildable as backbone ``name``."""

    def decorator(factory: EncoderFactory) -> EncoderFactory:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} is registered twice")
        _ENCODERS[name] = EncoderEntry(factory, weights, label)
        return factory

    return decorator


def list_encoders() -> list[str]:
    """Names of the registered backbones, in registration order."""
    return list(_ENCODERS)


def encoder_entry(name: str) -> EncoderEntry:
    if name not in _ENCODERS:
        raise SemsegError(f"unknown backbone {name!r}; available: {', '.join(list_encoders())}")
    return _ENCODERS[name]


def _width_one(name: str, width_mult: float) -> None:
    if width_mult != 1.0:
        raise SemsegError(f"encoder {name} exists at width_mult 1.0 only (got {width_mult})")


@register_encoder("vgg16", "VGG16_Weights", "VGG16")
def _vgg16(keep_prob: float, width_mult: float) -> Encoder:
    return VGGEncoder(keep_prob, width_mult, batch_norm=False)


@register_encoder("vgg16_bn", "VGG16_BN_Weights", "VGG16-BN")
def _vgg16_bn(keep_prob: float, width_mult: float) -> Encoder:
    return VGGEncoder(keep_prob, width_mult, batch_norm=True)


@register_encoder("resnet18", "ResNet18_Weights", "ResNet-18")
def _resnet18(keep_prob: float, width_mult: float) -> Encoder:
    _width_one("resnet18", width_mult)
    return ResNetEncoder(18, keep_prob)


@register_encoder("resnet34", "ResNet34_Weights", "ResNet-34")
def _resnet34(keep_prob: float, width_mult: float) -> Encoder:
    _width_one("resnet34", width_mult)
    return ResNetEncoder(34, keep_prob)


@register_encoder("resnet50", "ResNet50_Weights", "ResNet-50")
def _resnet50(keep_prob: float, width_mult: float) -> Encoder:
    _width_one("resnet50", width_mult)
    return ResNetEncoder(50, keep_prob)


@register_encoder("mobilenet_v3_large", "MobileNet_V3_Large_Weights", "MobileNetV3-Large")
def _mobilenet_v3_large(keep_prob: float, width_mult: float) -> Encoder:
    _width_one("mobilenet_v3_large", width_mult)
    return MobileNetV3Encoder(keep_prob)


def backbone_state_dict(
    name: str,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
    width_mult: float = 1.0,
) -> StateDict | None:
    """The torchvision state dict backbone ``name`` starts from: its ImageNet weights
    (``pretrained``), a local file (``backbone_weights``), or None for neither. Every model gets
    its backbone's weights here, before it builds a layer (see :mod:`semseg.models.weights`)."""
    entry = encoder_entry(name)
    return starting_weights(pretrained, backbone_weights, width_mult, entry.weights, entry.label)


def build_encoder(
    name: str = "vgg16",
    keep_prob: float = 0.5,
    width_mult: float = 1.0,
    pretrained: bool = False,
    backbone_weights: str | Path | None = None,
) -> Encoder:
    """Encoder ``name``, from scratch, with ImageNet weights or with a local state dict."""
    entry = encoder_entry(name)
    state_dict = backbone_state_dict(name, pretrained, backbone_weights, width_mult)
    encoder = entry.factory(keep_prob, width_mult)
    if state_dict is not None:
        encoder.load_torchvision_state_dict(state_dict)
    return encoder


def encoder_summary(name: str) -> dict[str, object]:
    """Parameters and stage table of encoder ``name`` at width 1 (built on the meta device)."""
    with torch.device("meta"):
        encoder = build_encoder(name, keep_prob=1.0)
    return {
        "name": name,
        "params": sum(p.numel() for p in encoder.parameters()),
        "feature_info": [info.__dict__ for info in encoder.feature_info],
        "taps": (encoder.pool3_channels, encoder.pool4_channels, encoder.fc7_channels),
    }


__all__ = [
    "Encoder",
    "EncoderFeatures",
    "StageInfo",
    "VGGEncoder",
    "backbone_state_dict",
    "build_encoder",
    "encoder_summary",
    "list_encoders",
    "register_encoder",
]
