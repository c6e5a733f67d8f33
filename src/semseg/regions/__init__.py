"""Region-based segmentation: proposals (computed once per image and cached), the data that
yields them with each image, and the task that trains the region models (``rcnn-regions``,
``sds``) on region labels. The networks themselves are in :mod:`semseg.models.regions`."""
