"""HCGNet-A1 (being written)."""
