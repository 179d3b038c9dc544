"""Environments: fingerprints of what a computation ran with, and the comparison of two of them."""

from .fingerprint import Comparison, Difference, Fingerprint, FingerprintError, capture, compare

__all__ = ["Fingerprint", "Comparison", "Difference", "FingerprintError", "capture", "compare"]
