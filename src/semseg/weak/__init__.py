"""Weak supervision: segmenters trained from cheaper labels than full masks, and the
pseudo-labels derived from them. May import torch, numpy, semseg.data, semseg.metrics,
semseg.models and semseg.inference (CRF); never training, cli or serve.

Boxes (Simple Does It, Khoreva et al. CVPR 2017; BoxSup, Dai, He & Sun ICCV 2015):
* :mod:`~semseg.weak.boxes` box annotations (COCO detection JSON, Pascal VOC XML);
* :mod:`~semseg.weak.derive` boxes derived from full masks (to measure against full supervision);
* :mod:`~semseg.weak.pseudolabels` training labels from boxes (box, box-i, GrabCut, candidates,
  M and G);
* :mod:`~semseg.weak.recursive` the label reset rules between recursive training rounds;
* :mod:`~semseg.weak.boxsup` BoxSup's candidate choice;
* :mod:`~semseg.weak.quality` pseudo-label quality against ground truth;
* :mod:`~semseg.weak.jobs` ``derive_boxes`` and ``write_pseudo_labels`` end to end.

Image-level tags (Pinheiro & Collobert CVPR 2015; CAM, Zhou et al. CVPR 2016):
* :mod:`~semseg.weak.tags` tags derived from masks or read from CSV/JSON;
* :mod:`~semseg.weak.mil` multiple-instance learning with Log-Sum-Exp pooling and its inference;
* :mod:`~semseg.weak.cam` class activation maps and their pseudo-labels;
* :mod:`~semseg.weak.tag_task` the LightningModule that trains from tags.

GrabCut, connected components, unsupervised segments and superpixels come from OpenCV (contrib)
and scikit-image, the optional extra ``pip install -e ".[weak]"``; they are imported when used.
"""
