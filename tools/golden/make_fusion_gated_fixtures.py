#!/usr/bin/env python3
"""Golden fixtures for the gated fusers: PyTorch twins of mmfuse::fusion::gated_multimodal_unit,
film and product_of_experts (tests/fusion/test_gated.cpp, tag [golden]).

    python3 tools/golden/make_fusion_gated_fixtures.py [--out tests/data/golden]

Layout and conventions as in make_layer_fixtures.py (whose make_case this script uses):
<case>/params.txt, <case>/{f64,f32}/ with the inputs, parameters, y, dy, grad_<input>,
grad_<parameter>, and presence.npy (bool (B, M), true = modality present) where a case
applies a mask. The twins are written from the equations of fusion.md (2.14 GMU, 4.7 FiLM,
2.15 MVAE product of experts) plus mmfuse's documented missing-modality rules:

  fusion_gated_gmu2     GMU, 2 modalities (GatedBimodal of johnarevalo/gmu-mmimdb without
                        its BatchNorm), (B, d) inputs, no mask
  fusion_gated_gmu3     GMU, 3 modalities (separate gates), (B, L, d) inputs, mask
  fusion_gated_film2d   FiLM on (B, C) features, no mask
  fusion_gated_film3d   FiLM on (B, L, C) features (channels last), mask
  fusion_gated_poe3     MVAE product of 3 experts and the N(0, I) prior, mask
"""
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main  # noqa: E402  (one fixture layout)


def column(keep, m, like):
    """Presence of modality m as (B, 1, ..., 1) weights of like's rank and dtype."""
    return keep[:, m].to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


class GMU(nn.Module):
    """Twin of gated_multimodal_unit<M>: proj<m> (no bias), gate (no bias) reading u."""

    def __init__(self, ins, dim):
        super().__init__()
        self.m, self.dim = len(ins), dim
        for k, d in enumerate(ins):
            setattr(self, f"proj{k}", nn.Linear(d, dim, bias=False))
        self.gate = nn.Linear(self.m * dim, dim if self.m == 2 else self.m * dim, bias=False)

    def forward(self, xs, keep=None):
        us = [getattr(self, f"proj{k}")(x) for k, x in enumerate(xs)]
        if keep is not None:
            us = [u * column(keep, k, u) for k, u in enumerate(us)]
        u = torch.cat(us, -1)
        hs = torch.tanh(u).split(self.dim, -1)
        z = torch.sigmoid(self.gate(u))
        if self.m == 2:
            if keep is None:
                return z * hs[0] + (1 - z) * hs[1]
            p0, p1 = column(keep, 0, z), column(keep, 1, z)
            return (p1 * z + (1 - p1)) * hs[0] + (p0 * (1 - z) + (1 - p0)) * hs[1]
        return sum(zk * hk for zk, hk in zip(z.split(self.dim, -1), hs))


class FiLM(nn.Module):
    """Twin of film: proj = Linear(Dc, 2C) laid out [dgamma | beta], gamma = 1 + dgamma."""

    def __init__(self, c, dc):
        super().__init__()
        self.c = c
        self.proj = nn.Linear(dc, 2 * c)

    def forward(self, x, cond, keep=None):
        gb = self.proj(cond)
        if keep is not None:
            x = x * column(keep, 0, x)
            gb = gb * column(keep, 1, gb)
        dgamma, beta = gb.split(self.c, -1)
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (self.c,)
        return (1 + dgamma).reshape(shape) * x + beta.reshape(shape)


class PoE(nn.Module):
    """Twin of product_of_experts (MultiBench fusions/MVAE.py ProductOfExperts, eps 1e-8)."""

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, xs, keep):
        d = xs[0].shape[-1] // 2
        mus = [torch.zeros_like(xs[0][..., :d])] + [x[..., :d] for x in xs]
        lvs = [torch.zeros_like(xs[0][..., d:])] + [x[..., d:] for x in xs]
        ts = [1.0 / (torch.exp(lv) + self.eps) for lv in lvs]
        ts = [ts[0]] + [t * column(keep, k, t) for k, t in enumerate(ts[1:])]
        total = sum(ts)
        mu = sum(m * t for m, t in zip(mus, ts)) / total
        return torch.cat([mu, torch.log(1.0 / total)], -1)


def rand(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def case_gmu2(g):
    ins = {"x0": rand(g, 3, 5), "x1": rand(g, 3, 4)}
    return GMU([5, 4], 3), ins, {}, lambda m, i, k: m([i["x0"], i["x1"]])


def case_gmu3(g):
    ins = {"x0": rand(g, 3, 2, 4), "x1": rand(g, 3, 2, 3), "x2": rand(g, 3, 2, 5)}
    keep = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    return GMU([4, 3, 5], 3), ins, {"presence": keep}, \
        lambda m, i, k: m([i["x0"], i["x1"], i["x2"]], k["presence"])


def case_film2d(g):
    ins = {"x": rand(g, 3, 4), "c": rand(g, 3, 5)}
    return FiLM(4, 5), ins, {}, lambda m, i, k: m(i["x"], i["c"])


def case_film3d(g):
    ins = {"x": rand(g, 3, 4, 4), "c": rand(g, 3, 3)}
    keep = torch.tensor([[True, True], [True, False], [False, True]])
    return FiLM(4, 3), ins, {"presence": keep}, lambda m, i, k: m(i["x"], i["c"], k["presence"])


def case_poe3(g):
    ins = {f"x{k}": rand(g, 4, 6) for k in range(3)}
    keep = torch.tensor([[True, True, True], [False, True, True], [True, False, False],
                         [True, True, False]])
    return PoE(), ins, {"presence": keep}, \
        lambda m, i, k: m([i["x0"], i["x1"], i["x2"]], k["presence"])


CASES = {
    "fusion_gated_gmu2": case_gmu2,
    "fusion_gated_gmu3": case_gmu3,
    "fusion_gated_film2d": case_film2d,
    "fusion_gated_film3d": case_film3d,
    "fusion_gated_poe3": case_poe3,
}



if __name__ == "__main__":
    main(CASES, 20240940, __doc__.split("\n")[0])
