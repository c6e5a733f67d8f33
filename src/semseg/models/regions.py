"""Region-classification models: R-CNN-style region features (``rcnn-regions``), SDS (``sds``)
and the per-region form of Hypercolumns (``hypercolumn-regions``, :class:`HypercolumnRegions`).

All classify region proposals instead of pixels and paste the regions back to pixels:

* **One shared encoder pass per image** (not one CNN pass per region, as R-CNN did): the encoder's
  stride 8, 16 and 32 maps, each 1x1-projected to :data:`FEATURE_CHANNELS` channels, upsampled
  to stride 8 and summed, give the feature map ``(N, D, H/8, W/8)``.
* ``rcnn-regions`` (Girshick et al., "Rich feature hierarchies for accurate object detection and
  semantic segmentation", CVPR 2014): per region the "full" features — ``roi_align`` of the
  feature map on the region's box (:func:`box_features`, 7x7) — and the "fg" features — the mean
  of the features over the region's own pixels (:func:`mask_pooled_features`, R-CNN's
  background-masked features), each through a fully connected layer, concatenated, then a
  softmax classifier trained with cross-entropy. (The paper trained one linear SVM per class on
  frozen CNN features; a softmax layer trained jointly is the feasible equivalent here.)
* ``sds`` (Hariharan et al., "Simultaneous Detection and Segmentation", ECCV 2014): a box pathway
  (``roi_align`` on the box) and a region pathway (``roi_align`` of the features with the
  region's background masked out: the box features times the region's own mask sampled on the
  same 7x7 grid), trained jointly into one classifier, and figure-ground refinement: a coarse
  :data:`GRID` x :data:`GRID` foreground map per class predicted for the region, trained against
  the share of the box's grid cell covered by the region's class, and at prediction time projected
  back (bilinear) onto the region's box.

Regions come with each image as :class:`RegionTensors` (label maps and boxes, see
:mod:`semseg.regions.proposals`; training reads them from the per-image cache). Given no
regions, ``forward`` computes them itself for each image (the model's ``proposals`` method), so
``semseg evaluate`` and ``semseg predict`` need nothing else — the time of proposals counts in
its time per image.

**Pasting** (:func:`paste_owner`): each pixel takes the region of highest score (the softmax
probability of the region's predicted class) among the regions that cover it. Every pixel is
covered: pixels no proposal covers form the *complement* region, classified like any other
(:func:`semseg.regions.proposals.make_regions`). SDS: a pixel of a region's box whose refined
foreground probability is at least 0.5 is claimed with score ``score * foreground``, the highest
claim wins; pixels no refined region claims keep the plain paste. The output "logits" of a pixel
are the log-probabilities of its region, so the argmax is the region's class and the softmax is
its class distribution.

Shapes: ``(N, 3, H, W) -> (N, num_classes, H, W)``.

The proposal methods (scikit-image, OpenCV: the ``weak`` extra) live in
:mod:`semseg.regions.proposals`, outside this package; importing :mod:`semseg.regions` installs
them here (:func:`set_proposer`), and loading a region model's checkpoint does that import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from semseg.errors import SemsegError
from semseg.models.base import SegmentationModel
from semseg.models.encoders import build_encoder
from semseg.models.registry import register_model

FEATURE_CHANNELS = 128
FEATURE_STRIDE = 8
POOL_SIZE = 7  # roi_align output, as Fast R-CNN's RoI pooling
SAMPLING_RATIO = 2  # bilinear samples per bin side
HIDDEN = 256
GRID = 10  # SDS figure-ground grid
FOREGROUND_THRESHOLD = 0.5


@dataclass
class RegionTensors:
    """The regions of one image at the model's input size (see :mod:`semseg.regions.proposals`):
    ``label_maps`` ``(L, H, W)`` long (ids ``0 .. num_mapped-1``, -1 none), ``boxes`` ``(R, 4)``
    float ``x0, y0, x1, y1`` (exclusive ends) of every region; regions from ``num_mapped`` on
    are their box."""

    label_maps: Tensor
    boxes: Tensor
    num_mapped: int

    @property
    def count(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device) -> RegionTensors:
        return RegionTensors(self.label_maps.to(device), self.boxes.to(device), self.num_mapped)


Proposer = Callable[[Tensor, str], list[RegionTensors]]
"""``(images (N, 3, H, W) in [0, 1], method) -> the regions of each image``."""

_PROPOSER: dict[str, Proposer] = {}


def set_proposer(proposer: Proposer) -> None:
    """Install what computes the regions of images given none: :mod:`semseg.regions` installs
    its proposal methods when imported (this package may not import it: the proposals need
    scikit-image and OpenCV)."""
    _PROPOSER["installed"] = proposer


@dataclass
class RegionOutputs:
    """Per image: class logits ``(R, C)`` of its regions and (SDS) grids ``(R, C, G, G)``."""

    logits: list[Tensor]
    grids: list[Tensor] | None = None


def box_features(features: Tensor, boxes: list[Tensor]) -> Tensor:
    """``roi_align`` of ``features`` ``(N, D, h, w)`` (stride :data:`FEATURE_STRIDE`) on each
    image's boxes (pixel ``x0, y0, x1, y1``): ``(sum R, D, 7, 7)``, pixel-aligned
    (``aligned=True``: a box edge at pixel ``x`` sits at ``x / stride - 0.5`` on the map)."""
    return roi_align(
        features,
        [b.to(features.dtype) for b in boxes],
        output_size=POOL_SIZE,
        spatial_scale=1.0 / FEATURE_STRIDE,
        sampling_ratio=SAMPLING_RATIO,
        aligned=True,
    )


def cell_coverage(regions: RegionTensors, grid: tuple[int, int], stride: int) -> Tensor:
    """``(R, h, w)``: how many pixels of each region fall in each ``stride x stride`` cell of
    the feature map ``grid = (h, w)`` (pixel ``(y, x)`` lies in cell ``(y // s, x // s)``)."""
    height, width = grid
    device = regions.boxes.device
    count = regions.count
    coverage = torch.zeros(count, height * width, device=device)
    for level in regions.label_maps:
        rows, cols = torch.nonzero(level >= 0, as_tuple=True)
        cells = (rows // stride) * width + cols // stride
        flat = level[rows, cols] * (height * width) + cells
        counts = torch.bincount(flat, minlength=count * height * width)
        coverage += counts.view(count, height * width).to(coverage.dtype)
    if regions.num_mapped < count:
        boxes = regions.boxes[regions.num_mapped :].round()
        starts = torch.arange(height, device=device) * stride
        overlap_y = (
            torch.minimum(boxes[:, 3:4], starts + stride) - torch.maximum(boxes[:, 1:2], starts)
        ).clamp(min=0)
        starts = torch.arange(width, device=device) * stride
        overlap_x = (
            torch.minimum(boxes[:, 2:3], starts + stride) - torch.maximum(boxes[:, 0:1], starts)
        ).clamp(min=0)
        box_cover = overlap_y[:, :, None] * overlap_x[:, None, :]
        coverage[regions.num_mapped :] = box_cover.reshape(-1, height * width)
    return coverage.view(count, height, width)


def mask_pooled_features(features: Tensor, coverage: Tensor) -> Tensor:
    """Mean of one image's ``features`` ``(D, h, w)`` over each region's pixels, each pixel
    taking the feature of its cell: ``(R, D)`` from ``coverage`` ``(R, h, w)`` pixel counts."""
    weights = coverage.flatten(1)
    pooled = weights @ features.flatten(1).t()
    return pooled / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def paste_owner(label_maps: Tensor, boxes: Tensor, num_mapped: int, scores: Tensor) -> Tensor:
    """Per pixel, the index of the covering region of highest score (later regions win ties):
    ``(H, W)`` long, -1 where no region covers the pixel."""
    height, width = label_maps.shape[-2:]
    best = torch.full((height, width), -torch.inf, device=scores.device)
    owner = torch.full((height, width), -1, dtype=torch.long, device=scores.device)
    for level in label_maps:
        inside = level >= 0
        level_scores = torch.where(inside, scores[level.clamp(min=0)], -torch.inf)
        wins = inside & (level_scores >= best)
        best = torch.where(wins, level_scores, best)
        owner = torch.where(wins, level, owner)
    for index in range(num_mapped, boxes.shape[0]):
        x0, y0, x1, y1 = (int(v) for v in boxes[index].round().tolist())
        window = best[y0:y1, x0:x1]
        wins = scores[index] >= window
        window[wins] = scores[index]
        owner[y0:y1, x0:x1][wins] = index
    return owner


def region_class_counts(regions: RegionTensors, mask: Tensor, num_classes: int) -> Tensor:
    """``(R, num_classes + 1)`` ground-truth pixel counts per region (last column: void)."""
    labels = torch.where(mask < num_classes, mask, num_classes).long()
    width = num_classes + 1
    count = regions.count
    counts = torch.zeros(count, width, dtype=torch.long, device=mask.device)
    for level in regions.label_maps:
        inside = level >= 0
        flat = level[inside] * width + labels[inside]
        counts += torch.bincount(flat, minlength=count * width).view(count, width)
    for index in range(regions.num_mapped, count):
        x0, y0, x1, y1 = (int(v) for v in regions.boxes[index].round().tolist())
        counts[index] = torch.bincount(labels[y0:y1, x0:x1].reshape(-1), minlength=width)
    return counts


def region_targets(
    regions: RegionTensors, mask: Tensor, num_classes: int, ignore_index: int
) -> Tensor:
    """Each region's label: the majority ground-truth class of its pixels; ``ignore_index``
    for regions that are mostly void (more than half) or empty."""
    counts = region_class_counts(regions, mask, num_classes)
    total = counts.sum(dim=1)
    labels = counts[:, :-1].argmax(dim=1)
    void = (total == 0) | (2 * counts[:, -1] > total)
    return torch.where(void, torch.full_like(labels, ignore_index), labels)


class RegionCNN(SegmentationModel):
    """``rcnn-regions``: see the module docstring. ``proposals``: the method that makes the
    regions of an image given none (felzenszwalb, slic, selective-search)."""

    uses_regions = True
    onnx_exportable = False  # proposals are computed in Python (scikit-image / OpenCV)

    def __init__(
        self,
        num_classes: int,
        backbone: str = "vgg16",
        keep_prob: float = 0.5,
        width_mult: float = 1.0,
        pretrained: bool = False,
        backbone_weights: str | Path | None = None,
        proposals: str = "felzenszwalb",
    ) -> None:
        super().__init__(num_classes)
        self.proposals = proposals
        self.encoder = build_encoder(backbone, keep_prob, width_mult, pretrained, backbone_weights)
        channels = (
            self.encoder.pool3_channels,
            self.encoder.pool4_channels,
            self.encoder.fc7_channels,
        )
        self.lateral = nn.ModuleList(nn.Conv2d(c, FEATURE_CHANNELS, 1) for c in channels)
        self.build_heads(num_classes)

    def build_heads(self, num_classes: int) -> None:
        pooled = FEATURE_CHANNELS * POOL_SIZE * POOL_SIZE
        self.full_fc = nn.Sequential(nn.Flatten(), nn.Linear(pooled, HIDDEN), nn.ReLU())
        self.fg_fc = nn.Sequential(nn.Linear(FEATURE_CHANNELS, HIDDEN), nn.ReLU())
        self.classifier = nn.Linear(2 * HIDDEN, num_classes)

    # --- features ------------------------------------------------------------------------------

    def feature_map(self, image: Tensor) -> Tensor:
        """The shared stride-8 feature map ``(N, D, ceil(H/32)*4, ceil(W/32)*4)``."""
        x = (image - self.mean) / self.std
        pad_bottom = -image.shape[-2] % self.size_multiple
        pad_right = -image.shape[-1] % self.size_multiple
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom))
        taps = self.encoder(x)
        fused = self.lateral[0](taps.pool3)
        for layer, tap in zip(self.lateral[1:], (taps.pool4, taps.fc7), strict=True):
            fused = fused + F.interpolate(
                layer(tap), size=fused.shape[-2:], mode="bilinear", align_corners=False
            )
        return F.relu(fused)

    def region_outputs(self, images: Tensor, regions: list[RegionTensors]) -> RegionOutputs:
        features = self.feature_map(images)
        full = box_features(features, [r.boxes for r in regions])
        coverages = [cell_coverage(r, features.shape[-2:], FEATURE_STRIDE) for r in regions]
        return self.classify(features, full, coverages, regions)

    def classify(
        self,
        features: Tensor,
        full: Tensor,
        coverages: list[Tensor],
        regions: list[RegionTensors],
    ) -> RegionOutputs:
        fg = torch.cat(
            [mask_pooled_features(f, c) for f, c in zip(features, coverages, strict=True)]
        )
        joint = torch.cat([self.full_fc(full), self.fg_fc(fg)], dim=1)
        logits = self.classifier(joint)
        return RegionOutputs(list(logits.split([r.count for r in regions])))

    # --- pixels --------------------------------------------------------------------------------

    def paste(
        self, outputs: RegionOutputs, regions: list[RegionTensors], size: tuple[int, int]
    ) -> Tensor:
        """Pixel log-probabilities ``(N, C, H, W)`` of the regions pasted by score."""
        pixels = []
        for index, (logits, region) in enumerate(zip(outputs.logits, regions, strict=True)):
            log_probs = logits.float().log_softmax(dim=1)
            scores = log_probs.exp().amax(dim=1)
            owner = paste_owner(region.label_maps, region.boxes, region.num_mapped, scores)
            owner = self.refine_owner(outputs, index, region, scores, owner)
            pixels.append(log_probs[owner.clamp(min=0)].permute(2, 0, 1))
        return torch.stack(pixels)[..., : size[0], : size[1]]

    def refine_owner(
        self,
        outputs: RegionOutputs,
        index: int,
        region: RegionTensors,
        scores: Tensor,
        owner: Tensor,
    ) -> Tensor:
        return owner

    def forward(self, image: Tensor, regions: list[RegionTensors] | None = None) -> Tensor:
        if regions is None:
            regions = self.propose(image)
        outputs = self.region_outputs(image, regions)
        return self.paste(outputs, regions, image.shape[-2:])

    def propose(self, images: Tensor) -> list[RegionTensors]:
        """The regions of each image by the model's ``proposals`` method (default parameters),
        computed by the installed :data:`Proposer` (see :func:`set_proposer`)."""
        proposer = _PROPOSER.get("installed")
        if proposer is None:
            raise SemsegError(
                f"{type(self).__name__} needs region proposals: import semseg.regions (which "
                "installs them; loading a checkpoint does) or pass regions to forward"
            )
        return [r.to(images.device) for r in proposer(images, self.proposals)]

    # --- training ------------------------------------------------------------------------------

    def region_loss(
        self,
        outputs: RegionOutputs,
        regions: list[RegionTensors],
        masks: Tensor,
        ignore_index: int,
        class_weights: Tensor | None = None,
    ) -> Tensor:
        """Cross-entropy of the regions against their majority ground-truth class
        (``class_weights``: per-class weights, e.g. median-frequency)."""
        targets = self.targets(regions, masks, ignore_index)
        logits = torch.cat(outputs.logits).float()
        if bool((targets == ignore_index).all()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, weight=class_weights, ignore_index=ignore_index)

    def targets(self, regions: list[RegionTensors], masks: Tensor, ignore_index: int) -> Tensor:
        return torch.cat(
            [
                region_targets(r, m, self.num_classes, ignore_index)
                for r, m in zip(regions, masks, strict=True)
            ]
        )


class SDS(RegionCNN):
    """``sds``: the box and region pathways trained jointly, with figure-ground refinement
    (see the module docstring)."""

    def build_heads(self, num_classes: int) -> None:
        pooled = FEATURE_CHANNELS * POOL_SIZE * POOL_SIZE
        self.box_fc = nn.Sequential(nn.Flatten(), nn.Linear(pooled, HIDDEN), nn.ReLU())
        self.region_fc = nn.Sequential(nn.Flatten(), nn.Linear(pooled, HIDDEN), nn.ReLU())
        self.classifier = nn.Linear(2 * HIDDEN, num_classes)
        self.figure_ground = nn.Linear(2 * HIDDEN, num_classes * GRID * GRID)

    def classify(
        self,
        features: Tensor,
        full: Tensor,
        coverages: list[Tensor],
        regions: list[RegionTensors],
    ) -> RegionOutputs:
        shares = torch.cat([c / FEATURE_STRIDE**2 for c in coverages])[:, None]
        own_masks = roi_align(
            shares,
            _own_boxes(regions, shares.device).to(shares.dtype),
            output_size=POOL_SIZE,
            spatial_scale=1.0 / FEATURE_STRIDE,
            sampling_ratio=SAMPLING_RATIO,
            aligned=True,
        )
        masked = full * own_masks
        joint = torch.cat([self.box_fc(full), self.region_fc(masked)], dim=1)
        counts = [r.count for r in regions]
        logits = self.classifier(joint)
        grids = self.figure_ground(joint).view(-1, self.num_classes, GRID, GRID)
        return RegionOutputs(list(logits.split(counts)), list(grids.split(counts)))

    def refine_owner(
        self,
        outputs: RegionOutputs,
        index: int,
        region: RegionTensors,
        scores: Tensor,
        owner: Tensor,
    ) -> Tensor:
        assert outputs.grids is not None
        classes = outputs.logits[index].argmax(dim=1)
        grids = outputs.grids[index].float().sigmoid()
        best = torch.full(owner.shape, -torch.inf, device=owner.device)
        refined = torch.full_like(owner, -1)
        height, width = owner.shape
        for r in range(region.count):
            x0, y0, x1, y1 = (int(v) for v in region.boxes[r].round().tolist())
            x1, y1 = min(x1, width), min(y1, height)
            if x1 <= x0 or y1 <= y0:
                continue
            fg = F.interpolate(
                grids[r, classes[r]][None, None],
                size=(y1 - y0, x1 - x0),
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            claim = scores[r] * fg
            window = best[y0:y1, x0:x1]
            wins = (fg >= FOREGROUND_THRESHOLD) & (claim >= window)
            window[wins] = claim[wins]
            refined[y0:y1, x0:x1][wins] = r
        return torch.where(refined >= 0, refined, owner)

    def region_loss(
        self,
        outputs: RegionOutputs,
        regions: list[RegionTensors],
        masks: Tensor,
        ignore_index: int,
        class_weights: Tensor | None = None,
    ) -> Tensor:
        """Cross-entropy of the classes (weighted by ``class_weights``) plus the binary
        cross-entropy of each labelled region's grid (of its class) against the share of each
        grid cell of its box that is that class."""
        targets = self.targets(regions, masks, ignore_index)
        logits = torch.cat(outputs.logits).float()
        if bool((targets == ignore_index).all()):
            return logits.sum() * 0.0
        classification = F.cross_entropy(
            logits, targets, weight=class_weights, ignore_index=ignore_index
        )
        assert outputs.grids is not None
        grids = torch.cat(outputs.grids).float()
        labelled = torch.nonzero(targets != ignore_index).squeeze(1)
        shares = figure_ground_targets(regions, masks, targets, self.num_classes)
        chosen = grids[labelled, targets[labelled]]
        return classification + F.binary_cross_entropy_with_logits(chosen, shares[labelled])


def _own_boxes(regions: list[RegionTensors], device: torch.device) -> Tensor:
    """Boxes ``(sum R, 5)`` whose batch index is the region's own index (one map per region)."""
    boxes = torch.cat([r.boxes for r in regions]).to(device)
    order = torch.arange(boxes.shape[0], device=device, dtype=boxes.dtype)[:, None]
    return torch.cat([order, boxes], dim=1)


def figure_ground_targets(
    regions: list[RegionTensors], masks: Tensor, targets: Tensor, num_classes: int
) -> Tensor:
    """``(sum R, G, G)``: per region, the share of each cell of a G x G grid on its box that
    holds its target class (``roi_align`` of the class's 0/1 map; ignored regions get zeros)."""
    out = []
    start = 0
    for region, mask in zip(regions, masks, strict=True):
        labels = targets[start : start + region.count].clamp(max=num_classes - 1)
        start += region.count
        one_hot = F.one_hot(mask.clamp(max=num_classes).long(), num_classes + 1)
        planes = one_hot[..., :num_classes].permute(2, 0, 1)[:, None].float()
        rois = torch.cat([labels[:, None].to(region.boxes.dtype), region.boxes], dim=1)
        shares = roi_align(planes, rois, GRID, 1.0, SAMPLING_RATIO, aligned=True)
        out.append(shares[:, 0])
    return torch.cat(out)


def location_weights(k: int, size: int) -> Tensor:
    """``(k*k, size, size)``: the bilinear weights of a k x k grid of classifiers at each cell of
    a size x size map (Hariharan et al., CVPR 2015): along each axis, cell ``j``'s position
    ``(j + 0.5) k / size - 0.5`` in grid units, clamped to ``[0, k - 1]``, weighs grid entry
    ``i`` by ``max(0, 1 - |position - i|)``. The weights of each cell sum to 1; k = 1 gives 1."""
    position = ((torch.arange(size, dtype=torch.float64) + 0.5) * k / size - 0.5).clamp(0, k - 1)
    axis = (1 - (position[None, :] - torch.arange(k, dtype=torch.float64)[:, None]).abs()).clamp(
        min=0
    )  # (k, size)
    weights = axis[:, None, :, None] * axis[None, :, None, :]  # (k, k, size, size)
    return weights.reshape(k * k, size, size).float()


def location_specific_scores(
    columns: Tensor, weight: Tensor, bias: Tensor, weights: Tensor
) -> Tensor:
    """Scores ``(R, C, M, M)`` of hypercolumns ``columns`` ``(R, D, M, M)`` by k x k
    location-specific linear classifiers ``weight`` ``(k*k, C, D)``, ``bias`` ``(k*k, C)``,
    interpolated by ``weights`` ``(k*k, M, M)`` (:func:`location_weights`). Linear in the
    classifiers, so the interpolated classifier is formed first (``M*M*C*D`` numbers) instead of
    every grid classifier's scores of every region (``R*k*k*C*M*M``)."""
    effective = torch.einsum("kuv,kcd->uvcd", weights, weight)
    effective_bias = torch.einsum("kuv,kc->cuv", weights, bias)
    return torch.einsum("uvcd,rduv->rcuv", effective, columns) + effective_bias


class HypercolumnRegions(SDS):
    """``hypercolumn-regions``: the per-region form of Hypercolumns (Hariharan et al.,
    "Hypercolumns for Object Segmentation and Fine-grained Localization", CVPR 2015).

    The region's class comes from the ``rcnn-regions`` head (full + fg features); its figure-ground
    map from the hypercolumns: the shared feature map (stride 8, 16 and 32 stages, each
    1x1-projected, upsampled and summed, as the paper's per-pixel feature stack) sampled by
    ``roi_align`` on a :data:`GRID` x :data:`GRID` grid over the box, classified per cell by
    :data:`LOCATION_GRID` x :data:`LOCATION_GRID` location-specific classifiers interpolated
    bilinearly (:func:`location_specific_scores`). Training and pasting are SDS's: the map of
    the region's class is trained against the share of its class in each cell, and at
    prediction projected onto the box."""

    location_grid = 3

    def build_heads(self, num_classes: int) -> None:
        RegionCNN.build_heads(self, num_classes)
        k2 = self.location_grid**2
        self.location_weight = nn.Parameter(torch.empty(k2, num_classes, FEATURE_CHANNELS))
        nn.init.normal_(self.location_weight, std=0.01)
        self.location_bias = nn.Parameter(torch.zeros(k2, num_classes))
        self.register_buffer(
            "cell_weights", location_weights(self.location_grid, GRID), persistent=False
        )

    def classify(
        self,
        features: Tensor,
        full: Tensor,
        coverages: list[Tensor],
        regions: list[RegionTensors],
    ) -> RegionOutputs:
        outputs = RegionCNN.classify(self, features, full, coverages, regions)
        columns = roi_align(
            features,
            [r.boxes.to(features.dtype) for r in regions],
            output_size=GRID,
            spatial_scale=1.0 / FEATURE_STRIDE,
            sampling_ratio=SAMPLING_RATIO,
            aligned=True,
        )
        grids = location_specific_scores(
            columns, self.location_weight, self.location_bias, self.cell_weights
        )
        outputs.grids = list(grids.split([r.count for r in regions]))
        return outputs


register_model("rcnn-regions")(RegionCNN)
register_model("sds")(SDS)
register_model("hypercolumn-regions")(HypercolumnRegions)

REGION_MODELS = ("rcnn-regions", "sds", "hypercolumn-regions")


def is_region_model(name: str) -> bool:
    """Whether model ``name`` classifies regions (trained by the region task)."""
    return name in REGION_MODELS


__all__ = [
    "SDS",
    "HypercolumnRegions",
    "location_specific_scores",
    "location_weights",
    "RegionCNN",
    "RegionOutputs",
    "RegionTensors",
    "box_features",
    "cell_coverage",
    "is_region_model",
    "mask_pooled_features",
    "paste_owner",
    "region_targets",
    "set_proposer",
]
