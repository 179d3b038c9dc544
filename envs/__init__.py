"""Environments: fingerprints of what a computation ran with, and the comparison of two of them."""

from .compare import Comparison, Difference, compare
from .fingerprint import Fingerprint, FingerprintError, capture

__all__ = ["Fingerprint", "Comparison", "Difference", "FingerprintError", "capture", "compare"]
