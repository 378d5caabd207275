#!/usr/bin/env python3
"""Golden fixtures: PyTorch twins of mmfuse's tensor-fusion family (tests/fusion/test_tensor.cpp).

Make the fixtures (needs torch and numpy; CPU is enough):

    python3 tools/golden/make_fusion_tensor_fixtures.py [--out tests/data/golden]

Twins, written from the equations of fusion.md sections 2.5-2.7 (state_dict names equal to
mmfuse's parameter names):

    TensorFusion        TFN: flattened outer product of [1; x_m] (1 prepended, modality 0
                        most significant)                       -> fusion::tensor_fusion
    LowRankFusion       LMF: factor<m> (r, d_m+1, o), fusion_weights (1, r), fusion_bias (1, o)
                                                                -> fusion::low_rank_fusion
    MI2                 multiplicative interaction, 'matrix', 'matrix3D' and 'vector' forms,
                        parameters W, U, V, b               -> fusion::multiplicative_interaction
    MI3                 3-modal: a = MI2 matrix3D, b = MI2 matrix; y_b = x3_b A_b + C_b (the
                        per-sample contraction)             -> fusion::multiplicative_interaction3

Per case `<out>/fusion_tensor_<case>/params.txt` (state_dict names in order) and in f64/ and
f32/ (the same values computed in float64 and float32):

    x0.npy, x1.npy, ...      the inputs (B, d_m)
    <name>.npy               every parameter under its state_dict name
    y.npy, dy.npy            output and a fixed cotangent
    grad_x<m>.npy            d sum(y * dy) / d x_m
    grad_<name>.npy          d sum(y * dy) / d parameter

All modalities are present (presence masks are tested against double loops in C++).
Parameters are random 0.3 N(0, 1) (not the reference init) drawn in float64 from fixed seeds;
the float32 folder holds the same values rounded to float32.
"""
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main  # noqa: E402  (one fixture layout)

B = 2


def with_one(x):
    """[1; x] on the last axis (the 1 prepended, index 0)."""
    return torch.cat((torch.ones(x.shape[0], 1, dtype=x.dtype), x), dim=1)


class TensorFusion(nn.Module):
    def forward(self, xs):
        y = with_one(xs[0])
        for x in xs[1:]:
            y = torch.einsum("ba,bc->bac", y, with_one(x)).reshape(x.shape[0], -1)
        return y


class LowRankFusion(nn.Module):
    def __init__(self, dims, out, rank):
        super().__init__()
        for m, d in enumerate(dims):
            self.register_parameter(f"factor{m}", nn.Parameter(torch.empty(rank, d + 1, out)))
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.empty(1, out))
        self.n = len(dims)

    def forward(self, xs):
        prod = 1
        for m, x in enumerate(xs):
            prod = prod * torch.matmul(with_one(x), getattr(self, f"factor{m}"))  # (r, B, o)
        return torch.einsum("r,rbo->bo", self.fusion_weights[0], prod) + self.fusion_bias


class MI2(nn.Module):
    def __init__(self, n, m, out, form):
        super().__init__()
        self.form = form
        if form == "vector":
            shapes = [(n, m), (n, m), (m,), (m,)]
        else:
            o = tuple(out)
            shapes = [(n, m) + o, (n,) + o, (m,) + o, o]
        for name, s in zip("WUVb", shapes):
            self.register_parameter(name, nn.Parameter(torch.empty(s)))

    def forward(self, xs):
        x1, x2 = xs
        if self.form == "vector":
            return (x1 @ self.W + self.V) * x2 + x1 @ self.U + self.b
        wp = torch.einsum("bn,nm...->bm...", x1, self.W) + self.V
        bp = torch.einsum("bn,n...->b...", x1, self.U) + self.b
        return torch.einsum("bm,bm...->b...", x2, wp) + bp


class MI3(nn.Module):
    def __init__(self, n, m, k, d):
        super().__init__()
        self.a = MI2(n, m, (k, d), "matrix3D")
        self.b = MI2(n, m, (d,), "matrix")

    def forward(self, xs):
        return torch.einsum("bk,bkd->bd", xs[2], self.a(xs[:2])) + self.b(xs[:2])


def inputs(g, dims):
    return {f"x{m}": torch.randn(B, d, generator=g, dtype=torch.float64)
            for m, d in enumerate(dims)}


def case(module, dims):
    """A twin taking the list [x0, x1, ...] of its inputs."""
    return lambda g: (module, inputs(g, dims), {},
                      lambda m, i, k: m([i[f"x{j}"] for j in range(len(i))]))


CASES = {
    "fusion_tensor_tfn3": case(TensorFusion(), (2, 3, 2)),
    "fusion_tensor_lmf2": case(LowRankFusion((3, 2), 4, 3), (3, 2)),
    "fusion_tensor_lmf3": case(LowRankFusion((2, 3, 2), 3, 2), (2, 3, 2)),
    "fusion_tensor_mi2_matrix": case(MI2(3, 4, (5,), "matrix"), (3, 4)),
    "fusion_tensor_mi2_vector": case(MI2(3, 4, None, "vector"), (3, 4)),
    "fusion_tensor_mi3": case(MI3(2, 3, 3, 4), (2, 3, 3)),
}








if __name__ == "__main__":
    main(CASES, 20240900, __doc__.split("\n")[0])
