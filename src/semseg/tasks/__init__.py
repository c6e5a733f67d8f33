"""Lightning tasks: the LightningModule that holds a model, its loss (the recipe: cross-entropy,
Dice or Lovasz terms, class weights such as median-frequency balancing), its validation metrics
and its optimiser and schedule, with the hyperparameters saved in every checkpoint. May import
``semseg.models``, ``semseg.metrics``, ``semseg.config`` and torch/Lightning; never training,
inference, cli or serve.
"""

from semseg.tasks.segmentation import SegmentationTask

__all__ = ["SegmentationTask"]
