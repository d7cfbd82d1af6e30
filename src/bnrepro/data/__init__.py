"""Data as tensors: the datasets (datasets.py), how batches are drawn from them (sampling.py)
and the augmentation applied to a batch (augment.py)."""
