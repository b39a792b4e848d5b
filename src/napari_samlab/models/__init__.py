"""Segmentation engines: the classic (no-weights) engine and checkpoint families."""
