"""Lightning tasks."""

from semseg.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
