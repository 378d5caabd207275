#!/usr/bin/env python3
"""Writes the small NumPy .npy fixtures that tests/interop/test_npy.cpp loads.

Usage: python3 tools/golden/make_npy_fixtures.py   (needs numpy; writes tests/data/npy/)

Every array is given by a closed formula or a short literal list, which the C++ test
re-derives independently, so the fixtures check mmfuse's parser against files written
by NumPy itself (numpy.save / numpy.lib.format.write_array), including the header
variants mmfuse must accept: format versions 1.0, 2.0 and 3.0, Fortran order, big-endian
data, rank 0 and zero-size arrays.
"""
import pathlib

import numpy as np
from numpy.lib import format as npy_format

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "npy"


def flat(shape, dtype):
    """0, 1, 2, ... laid out in C order with the given shape."""
    return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape).astype(dtype)


def write(name, array, version=None):
    path = OUT / name
    with open(path, "wb") as f:
        if version is None:
            np.save(f, array, allow_pickle=False)
        else:
            npy_format.write_array(f, array, version=version, allow_pickle=False)
    print(f"{path.name}: {array.dtype.str} shape={array.shape} "
          f"fortran={np.isfortran(array)} version={version or 'auto'}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    # k = C-order flat index of the element in every formula below.
    write("f4_c.npy", flat((3, 4), np.float32) * np.float32(0.5) - np.float32(2.75))  # k/2 - 2.75
    write("f8.npy", flat((2, 3, 4), np.float64) * 0.125 - 1.5)                          # k/8 - 1.5
    write("f2.npy", flat((2, 3), np.float16) * np.float16(0.5) - np.float16(1.0))      # k/2 - 1
    write("i8.npy", np.array([-(2**40), -1, 0, 7, 2**50 + 3], dtype=np.int64))
    write("i4.npy", np.array([[-7, 2**31 - 1], [-(2**31), 5]], dtype=np.int32))
    write("u1.npy", np.array([0, 1, 128, 255], dtype=np.uint8))
    i, j = np.indices((3, 3))
    write("b1.npy", (i + j) % 2 == 0)                                                    # (i+j) even
    write("scalar_f8.npy", np.array(3.5, dtype=np.float64))                              # rank 0
    write("empty_f4.npy", np.zeros((0, 3), dtype=np.float32))                            # zero-size
    write("v2_f4.npy", flat((2, 3), np.float32) + np.float32(0.25), version=(2, 0))     # k + 0.25
    write("v3_i4.npy", np.array([1, 2, 3], dtype=np.int32), version=(3, 0))
    # Fortran order: element (i, j, k) is i*6 + j*2 + k, stored column-major in the file.
    write("fortran_f4.npy", np.asfortranarray(flat((2, 3, 2), np.float32)))
    write("big_f4.npy", (flat((2, 3), np.float64) * 1.5 - 2.0).astype(">f4"))          # 1.5k - 2
    write("big_i8.npy", np.array([1, -2, 2**40], dtype=">i8"))


if __name__ == "__main__":
    main()
