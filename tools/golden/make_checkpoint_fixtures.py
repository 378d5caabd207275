#!/usr/bin/env python3
"""Golden fixtures for mmfuse checkpoints (tests/nn/test_checkpoint.cpp, docs/checkpoints.md).

Make the fixtures (needs torch, safetensors, numpy; CPU is enough):

    python3 tools/golden/make_checkpoint_fixtures.py [--out tests/data/checkpoints]

writes
    seq_mlp.safetensors   state_dict of nn.Sequential(nn.Linear(4, 8), nn.ReLU(),
                          nn.Linear(8, 3)) in float32, saved with safetensors.torch.save_file
                          (keys 0.weight, 0.bias, 2.weight, 2.bias)
    seq_mlp_input.npy     x, float32 (5, 4)
    seq_mlp_output.npy    model(x), float32 (5, 3), computed by PyTorch
    dtypes.safetensors    one (2, 3) tensor per dtype: f32, f64, f16, bf16, i32, i64, u8, bool
    dtypes_values.npy     float64 (8, 2, 3): each of those tensors as PyTorch converts it to
                          float64 (so the test checks mmfuse's F16/BF16 decoding bit for bit)

Check that a checkpoint saved by mmfuse loads in PyTorch (strict load_state_dict), and
optionally that PyTorch's forward on `input` reproduces `expected` (float32, rtol 1e-5):

    python3 tools/golden/make_checkpoint_fixtures.py --verify model.safetensors \
        [--input x.npy --expected y.npy]

The C++ test writes such a triple when MMFUSE_CHECKPOINT_EXPORT_DIR is set.
"""
import argparse
import pathlib
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def twin() -> torch.nn.Module:
    """The PyTorch twin of the mmfuse test module (children named 0, 1, 2)."""
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def make(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(20240611)
    model = twin().float().eval()
    x = torch.randn(5, 4, dtype=torch.float32)
    with torch.no_grad():
        y = model(x)
    save_file(model.state_dict(), str(out / "seq_mlp.safetensors"), metadata={"format": "pt"})
    np.save(out / "seq_mlp_input.npy", x.numpy())
    np.save(out / "seq_mlp_output.npy", y.numpy())

    base = torch.randn(2, 3, dtype=torch.float64) * 3
    tensors = {
        "f32": base.float(),
        "f64": base.clone(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i32": (base * 10).round().int(),
        "i64": (base * 1000).round().long(),
        "u8": (base.abs() * 20).round().clamp(0, 255).to(torch.uint8),
        "bool": base > 0,
    }
    save_file(tensors, str(out / "dtypes.safetensors"))
    values = np.stack([tensors[k].double().numpy() for k in
                       ["f32", "f64", "f16", "bf16", "i32", "i64", "u8", "bool"]])
    np.save(out / "dtypes_values.npy", values)
    print(f"wrote fixtures to {out}")


def verify(path: str, input_path: str | None, expected_path: str | None) -> int:
    state = load_file(path)
    model = twin().float().eval()
    result = model.load_state_dict(state, strict=True)  # raises on missing/unexpected/shape
    print(f"{path}: loaded {len(state)} tensors into the PyTorch twin ({result})")
    for k, v in state.items():
        print(f"  {k}: {v.dtype} {tuple(v.shape)}")
    if input_path:
        x = torch.from_numpy(np.load(input_path))
        with torch.no_grad():
            y = model(x).numpy()
        if expected_path:
            expected = np.load(expected_path)
            err = np.max(np.abs(y - expected) / np.maximum(1.0, np.abs(expected)))
            print(f"  forward vs mmfuse output: max rel error {err:.3g}")
            if not err <= 1e-5:
                print("  MISMATCH")
                return 1
    print("OK")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).resolve().parents[2] /
                                         "tests" / "data" / "checkpoints"))
    ap.add_argument("--verify", metavar="FILE")
    ap.add_argument("--input")
    ap.add_argument("--expected")
    args = ap.parse_args()
    if args.verify:
        return verify(args.verify, args.input, args.expected)
    make(pathlib.Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
