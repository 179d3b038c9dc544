"""Tests of the environment fingerprint."""
