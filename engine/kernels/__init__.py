"""Numba kernels: pure functions from packed genotype blocks and sample vectors to sufficient statistics.

Every kernel reads the 2-bit layout of :mod:`better.genomics.schema` directly (an all-hom-ref byte is skipped)
and has a slow numpy twin in ``tests/engine_reference.py``.
"""
