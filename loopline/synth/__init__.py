"""Synthetic TEM frames and videos with exact ground truth (Govind et al. 2023)."""
