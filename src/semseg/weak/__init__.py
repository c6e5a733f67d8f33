"""Weak supervision from bounding boxes: Simple Does It and BoxSup.

* :mod:`~semseg.weak.boxes` box annotations (COCO detection JSON, Pascal VOC XML);
* :mod:`~semseg.weak.derive` boxes derived from full masks (to measure against full supervision);
* :mod:`~semseg.weak.pseudolabels` training labels from boxes (Khoreva et al., "Simple Does It:
  Weakly Supervised Instance and Semantic Segmentation", CVPR 2017);
* :mod:`~semseg.weak.recursive` the label reset rules between recursive training rounds;
* :mod:`~semseg.weak.boxsup` BoxSup's candidate choice (Dai, He & Sun, "BoxSup: Exploiting
  Bounding Boxes to Supervise Convolutional Networks for Semantic Segmentation", ICCV 2015);
* :mod:`~semseg.weak.quality` pseudo-label quality against ground truth;
* :mod:`~semseg.weak.jobs` the two jobs end to end: ``derive_boxes`` and ``write_pseudo_labels``.

GrabCut, connected components and the unsupervised segments come from OpenCV (contrib) and
scikit-image, the optional extra ``pip install 'semseg[weak]'``; they are imported when used.
"""
