#!/usr/bin/env python3
"""Golden fixtures for the fused attention op (tests/ops/test_attention.cpp, tag [golden]).

Make the fixtures (needs torch >= 2.1 for SDPA's `scale=`, and numpy; CPU is enough):

    python3 tools/golden/make_attention_fixtures.py [--out tests/data/golden/attention]

For every case below it writes, in float64, into `<out>/<case>/`:

    params.txt        "scale <s>", "causal <0|1>", "causal_offset <n>", one a line: the
                      mmfuse attention_desc of the case
    q.npy, k.npy, v.npy   (B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, Dv)
    keep.npy          bool keep-mask in MMFUSE polarity (true = attend; SDPA's bool attn_mask
                      has the same polarity), in a shape broadcastable to (B, H, Lq, Lk);
                      absent when the case has no mask
    o.npy             torch.nn.functional.scaled_dot_product_attention(q, k, v, ...)
    lse.npy           (B, H, Lq) torch.logsumexp of the scaled, masked scores (computed
                      separately: SDPA does not return it)
    dout.npy          a fixed cotangent of o
    dq.npy, dk.npy, dv.npy   d sum(o * dout) / d q, k, v (autograd through SDPA)

Causal cases: SDPA's `is_causal=True` is top-left aligned (query i sees keys j <= i), mmfuse's
causal_offset 0. A bottom-right aligned case (causal_offset = Lk - Lq) is given to SDPA as an
explicit boolean mask `keep & tril(diagonal=Lk-Lq)` (SDPA takes no mask with is_causal), while
mmfuse gets the keep-mask plus its causal flag, so the AND of the two is tested too.
Fully masked query rows are avoided (SDPA returns NaN there, mmfuse 0; the generator
asserts it).
"""
import argparse
import math
import pathlib
import shutil

import numpy as np
import torch
import torch.nn.functional as F


def save(path, t):
    a = t.detach().cpu().numpy()
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    np.save(path, a)


def rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def random_keep(g, shape, p, full_shape, causal_offset=None):
    """A bool mask of `shape`, true with probability p, redrawn until no query row of the
    broadcast (and causally restricted) mask is empty."""
    lq, lk = full_shape[-2], full_shape[-1]
    while True:
        keep = torch.rand(*shape, generator=g, dtype=torch.float64) < p
        full = keep.expand(full_shape)
        if causal_offset is not None:
            full = full & torch.ones(lq, lk, dtype=torch.bool).tril(causal_offset)
        if bool(full.any(dim=-1).all()):
            return keep


# Each case: (B, H, Lq, Lk, D, Dv, scale or None (SDPA's default 1/sqrt(D)), causal offset or
# None, keep-mask shape or None, keep probability).
CASES = {
    "cross_no_mask": (2, 3, 5, 7, 4, 6, None, None, None, 0.0),
    "key_padding": (2, 2, 6, 6, 8, 8, 0.3, None, (2, 1, 1, 6), 0.6),
    "full_mask": (2, 2, 4, 9, 5, 3, 0.45, None, (2, 2, 4, 9), 0.5),
    "causal_top_left": (1, 2, 4, 7, 4, 5, None, 0, None, 0.0),
    "causal_top_left_more_queries": (2, 1, 7, 4, 3, 3, 0.8, 0, None, 0.0),
    "causal_bottom_right_masked": (2, 2, 3, 8, 4, 2, 0.5, 5, (2, 1, 3, 8), 0.7),
}


def make_case(out, name, spec, seed):
    b, h, lq, lk, d, dv, scale, offset, keep_shape, p = spec
    g = torch.Generator().manual_seed(seed)
    q = rand(g, b, h, lq, d).requires_grad_(True)
    k = rand(g, b, h, lk, d).requires_grad_(True)
    v = rand(g, b, h, lk, dv).requires_grad_(True)
    full_shape = (b, h, lq, lk)
    keep = None
    if keep_shape is not None:
        keep = random_keep(g, keep_shape, p, full_shape, offset)
    s = scale if scale is not None else 1.0 / math.sqrt(d)

    # The mask SDPA sees, and the full boolean mask for the reference lse.
    full = torch.ones(full_shape, dtype=torch.bool)
    if keep is not None:
        full = full & keep.expand(full_shape)
    if offset is not None:
        full = full & torch.ones(lq, lk, dtype=torch.bool).tril(offset)
    assert bool(full.any(dim=-1).all()), f"{name}: a fully masked row (SDPA gives NaN)"

    kwargs = {} if scale is None else {"scale": scale}
    if offset == 0 and keep is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
    elif offset is None and keep is None:
        o = F.scaled_dot_product_attention(q, k, v, **kwargs)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=full, **kwargs)
    assert bool(torch.isfinite(o).all()), f"{name}: non-finite output"
    dout = rand(g, *o.shape)
    (o * dout).sum().backward()

    with torch.no_grad():
        scores = (q @ k.transpose(-1, -2)) * s
        lse = torch.logsumexp(scores.masked_fill(~full, float("-inf")), dim=-1)

    case_dir = out / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    (case_dir / "params.txt").write_text(
        f"scale {s!r}\ncausal {int(offset is not None)}\n"
        f"causal_offset {0 if offset is None else offset}\n")
    for n, t in (("q", q), ("k", k), ("v", v), ("o", o), ("lse", lse), ("dout", dout),
                 ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        save(case_dir / f"{n}.npy", t)
    if keep is not None:
        save(case_dir / "keep.npy", keep)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path,
                    default=here / "tests" / "data" / "golden" / "attention")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for n, (name, spec) in enumerate(CASES.items()):
        make_case(args.out, name, spec, seed=20250900 + n)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(CASES)} cases, {total} bytes in {args.out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
