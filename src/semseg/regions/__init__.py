"""Region-based segmentation: proposals (computed once per image and cached), the data that
yields them with each image, and the task's data for the region models (``rcnn-regions``,
``sds``, ``hypercolumn-regions``). The networks are in :mod:`semseg.models.regions`; importing
this package installs the proposal methods there (:func:`semseg.models.regions.set_proposer`),
so a region model given an image alone computes its regions."""

from semseg.regions import proposals  # noqa: F401  (installs the region models' proposer)
