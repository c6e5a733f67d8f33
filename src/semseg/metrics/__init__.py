"""Metrics: the KITTI road devkit's measures reimplemented from their specification (MaxF, AP,
PRE, REC, FPR, FNR at the best threshold, per category), the streaming road metric used during
training (summed across DDP processes), and multi-class scores from one confusion matrix (per
class IoU and accuracy, mIoU, class-average and global accuracy, frequency-weighted IoU) with their
figures. May import numpy, torch, torchmetrics, matplotlib and ``semseg.io``/``semseg.errors``;
never data readers, models or anything above them.
"""
