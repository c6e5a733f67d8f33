"""Multi-class scores from one confusion matrix: SegNet's three CamVid metrics and more.

The confusion matrix ``M`` (rows: ground truth, columns: prediction) is accumulated over every
image of a split at full ground-truth resolution, void pixels (the ignore index) left out, with
torchmetrics' ``MulticlassConfusionMatrix`` (its state is summed across DDP ranks). With
``TP_c = M[c, c]``, ``G_c`` the row sum (pixels of class ``c``) and ``P_c`` the column sum
(pixels predicted as ``c``), all in percent:

* per class IoU ``TP_c / (G_c + P_c - TP_c)`` and accuracy (recall) ``TP_c / G_c``;
* mIoU: the mean IoU over the classes that occur in the ground truth or the prediction
  (Everingham et al., IJCV 2010; Long et al., CVPR 2015);
* class-average accuracy: the mean accuracy over the classes present in the ground truth;
* global accuracy: ``sum TP_c / sum G_c``, the fraction of pixels labelled correctly
  (Badrinarayanan et al., "SegNet", TPAMI 2017, report these three on CamVid);
* frequency-weighted IoU: ``sum_c (G_c / sum G) IoU_c`` (Long et al., CVPR 2015).

A class absent from both the ground truth and the prediction has no IoU (``None`` in JSON) and
does not count in the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from semseg.config import IGNORE_INDEX
from semseg.io import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class MulticlassScores:
    """Scores of one confusion matrix, in percent; ``nan`` where a class has no pixels."""

    iou: list[float]  # per class
    accuracy: list[float]  # per class (recall)
    miou: float
    mean_accuracy: float  # class-average accuracy
    global_accuracy: float
    fw_iou: float
    pixels: int  # labelled (non-void) pixels scored

    def summary(self) -> dict[str, float]:
        """The overall scores under the names used in logs, ``metrics.json`` and sweeps."""
        return {
            "miou": self.miou,
            "mean_acc": self.mean_accuracy,
            "global_acc": self.global_accuracy,
            "fwiou": self.fw_iou,
        }

    def as_dict(self, names: Sequence[str]) -> dict[str, Any]:
        """JSON-ready: the summary, ``pixels`` and ``per_class`` {name: {iou, accuracy}}."""
        per_class = {
            name: {"iou": _json_number(iou), "accuracy": _json_number(acc)}
            for name, iou, acc in zip(names, self.iou, self.accuracy, strict=True)
        }
        summary = {key: _json_number(value) for key, value in self.summary().items()}
        return {**summary, "pixels": self.pixels, "per_class": per_class}

    def markdown(self, names: Sequence[str]) -> str:
        """A per-class table and the overall scores as Markdown."""
        lines = ["| class | IoU | accuracy |", "|---|---:|---:|"]
        for name, iou, acc in zip(names, self.iou, self.accuracy, strict=True):
            lines.append(f"| {name} | {_cell(iou)} | {_cell(acc)} |")
        lines += [
            "",
            f"mIoU {_cell(self.miou)}, class-average accuracy {_cell(self.mean_accuracy)}, "
            f"global accuracy {_cell(self.global_accuracy)}, "
            f"frequency-weighted IoU {_cell(self.fw_iou)} (percent, {self.pixels} pixels)",
        ]
        return "\n".join(lines) + "\n"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def _cell(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def scores_from_confusion(matrix: np.ndarray | Tensor) -> MulticlassScores:
    """:class:`MulticlassScores` of a ``(C, C)`` confusion matrix (rows: ground truth)."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {m.shape}")
    tp = np.diag(m)
    gt = m.sum(axis=1)
    pred = m.sum(axis=0)
    union = gt + pred - tp
    total = gt.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan) * 100.0
        accuracy = np.where(gt > 0, tp / gt, np.nan) * 100.0
    present = gt > 0
    return MulticlassScores(
        iou=iou.tolist(),
        accuracy=accuracy.tolist(),
        miou=_nanmean(iou),
        mean_accuracy=_nanmean(accuracy),
        global_accuracy=float(tp.sum() / total * 100.0) if total > 0 else math.nan,
        fw_iou=float((gt[present] * iou[present]).sum() / total) if total > 0 else math.nan,
        pixels=int(total),
    )


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


class ConfusionMatrix(MulticlassConfusionMatrix):
    """torchmetrics' confusion matrix with void ignored, plus :meth:`scores`.

    ``update(preds, target)``: ``preds`` class ids ``(N, H, W)`` (or logits ``(N, C, H, W)``)
    and ``target`` ``(N, H, W)`` of the same size; pixels whose target is ``ignore_index`` are
    left out.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, **kwargs)

    def update_full_resolution(self, logits: Tensor, target: Tensor) -> None:
        """Scores ``logits (N, C, h, w)`` against ``target (N, H, W)`` at the target's size."""
        self.update(predictions_at(logits, tuple(target.shape[-2:])), target)

    def update_arrays(self, labels: np.ndarray, mask: np.ndarray) -> None:
        """One image: predicted class ids ``(H, W)`` against its ground truth ``(H, W)``."""
        self.update(
            torch.as_tensor(np.asarray(labels, dtype=np.int64))[None],
            torch.as_tensor(np.asarray(mask, dtype=np.int64))[None],
        )

    def scores(self) -> MulticlassScores:
        return scores_from_confusion(self.compute())


def predictions_at(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Class ids ``(N, H, W)`` of ``logits (N, C, h, w)`` upsampled bilinearly to ``size``."""
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def confusion_matrix(
    predictions: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """The ``(C, C)`` int64 confusion matrix of one image's class ids (rows: ground truth)."""
    metric = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    metric.update(torch.as_tensor(predictions).long(), torch.as_tensor(target).long())
    return metric.compute().numpy()


def write_multiclass_outputs(
    out_dir: str | Path,
    matrix: np.ndarray | Tensor,
    names: Sequence[str],
    colours: np.ndarray | None = None,
    title: str = "",
) -> MulticlassScores:
    """Everything a multi-class evaluation writes, atomically, into ``out_dir``:
    ``multiclass.json`` (scores, per class, and the raw confusion matrix), ``multiclass.md``
    (the per-class table), ``confusion.png`` and ``class_iou.png``."""
    from semseg.metrics.figures import plot_class_iou, plot_confusion_matrix

    out_dir = Path(out_dir)
    counts = np.asarray(matrix.cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.int64)
    scores = scores_from_confusion(counts)
    payload = {**scores.as_dict(names), "classes": list(names), "confusion": counts.tolist()}
    write_json_atomic(out_dir / "multiclass.json", payload)
    write_text_atomic(out_dir / "multiclass.md", scores.markdown(names))
    plot_confusion_matrix(counts, names, out_dir / "confusion.png", title=title)
    plot_class_iou(scores.iou, names, out_dir / "class_iou.png", colours=colours, title=title)
    return scores


__all__ = [
    "ConfusionMatrix",
    "MulticlassScores",
    "confusion_matrix",
    "predictions_at",
    "scores_from_confusion",
    "write_multiclass_outputs",
]
