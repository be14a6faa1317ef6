from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from better.genomics.packing import pack_genotypes, unpack_genotypes
from better.genomics.vcf_numba import find_newlines
from tests.reference import python_unpack


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 9).flatmap(lambda n: arrays(np.int8, (3, n), elements=st.integers(0, 3))))
def test_pack_unpack__round_trip_and_python_twin(codes: np.ndarray) -> None:
    packed = pack_genotypes(codes)
    assert packed.shape == (3, (codes.shape[1] + 3) // 4)
    assert np.array_equal(unpack_genotypes(packed, codes.shape[1]), codes)
    assert np.array_equal(python_unpack(packed, codes.shape[1]), codes)


def test_pack__all_hom_ref_byte_is_zero() -> None:
    assert pack_genotypes(np.zeros((2, 8), dtype=np.int8)).tolist() == [[0, 0], [0, 0]]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 40))
def test_find_newlines__equals_numpy(data: bytes, segments: int) -> None:
    buf = np.frombuffer(data, dtype=np.uint8)
    assert find_newlines(buf, segments).tolist() == np.flatnonzero(buf == 10).tolist()
