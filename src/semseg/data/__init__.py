"""Data: everything between files on disk and (image, mask) tensors.

Owns the dataset readers (KITTI ``data_road`` with its devkit colours and calib files, folders of
images and index or colour masks with a class table, flat or split into train/val/test as CamVid
ships, Pascal VOC and Cityscapes through torchvision), :func:`semseg.data.layout.detect_kind` (the
one rule for which kind a folder is), class tables, the synthetic scene generator, the joint
image/mask transforms and the Lightning data module. May import torch, torchvision, numpy, PIL,
``semseg.config``, ``semseg.io`` and ``semseg.errors``; never models, tasks, inference or above.
"""
