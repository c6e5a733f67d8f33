"""Weak supervision: segmenters trained from cheaper labels than full masks — image-level tags
(multiple-instance learning with Log-Sum-Exp pooling, Pinheiro & Collobert, CVPR 2015; class
activation maps, Zhou et al., CVPR 2016) and bounding boxes — and the pseudo-labels derived from
them."""
