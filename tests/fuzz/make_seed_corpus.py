#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_safetensors (tests/fuzz/corpus/safetensors/), standard
library only: a few valid files in the layout safetensors.torch.save_file produces (every dtype,
metadata, escapes, empty and rank-0 tensors) and a few near misses. The PyTorch-made fixtures
in tests/data/checkpoints/ are copied in as well."""
import json
import pathlib
import shutil
import struct

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "corpus" / "safetensors"
SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F16": 2, "BF16": 2, "I32": 4, "F32": 4, "F64": 8,
         "I64": 8, "U64": 8}


def image(tensors, metadata=None, pad=True, raw_header=None):
    """tensors: list of (name, dtype, shape); data bytes are a deterministic pattern."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = SIZES[dt]
        for d in shape:
            n *= d
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        chunk = bytes((i * 7 + 3) % 256 for i in range(n))
        if dt == "BOOL":
            chunk = bytes(b & 1 for b in chunk)
        data += chunk
        off += n
    h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    h = h.encode("utf-8")
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    seeds = {
        "empty_header": image([]),
        "mlp": image([("0.weight", "F32", [8, 4]), ("0.bias", "F32", [8]),
                      ("2.weight", "F32", [3, 8]), ("2.bias", "F32", [3])], {"format": "pt"}),
        "all_dtypes": image([(f"t_{d}", d, [2, 3]) for d in SIZES]),
        "edge_shapes": image([("scalar", "F64", []), ("empty", "F16", [0, 5]),
                              ("rank6", "U8", [1, 2, 1, 2, 1, 2])]),
        "escapes": image([("a\"b\\c\u00e9\U0001F600\n", "BF16", [2])],
                         {"k\"": "v\\", "\u00fc": "\t"}),
        "bad_overlap": image([], raw_header='{"a":{"dtype":"F32","shape":[2],'
                             '"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],'
                             '"data_offsets":[4,8]}}') + bytes(8),
        "bad_size": image([], raw_header='{"a":{"dtype":"F32","shape":[3],'
                          '"data_offsets":[0,8]}}') + bytes(8),
    }
    for name, b in seeds.items():
        (OUT / f"{name}.safetensors").write_bytes(b)
    fixtures = HERE.parent / "data" / "checkpoints"
    for p in sorted(fixtures.glob("*.safetensors")):
        shutil.copy(p, OUT / f"fixture_{p.name}")
    print(f"wrote {len(list(OUT.iterdir()))} seeds to {OUT}")


if __name__ == "__main__":
    main()
