#!/usr/bin/env python3
"""Golden fixtures for mmfuse::fusion::mult (tests/fusion/test_mult.cpp, tag [golden]).

A PyTorch twin of MulT's crossmodal transformer written from docs/reference fusion.md
section 4.1 (Tsai et al., ACL 2019; yaohungt/Multimodal-Transformer): pre-LN layers in which
ONE LayerNorm (layer_norms.0) normalises the query stream and the source, attention by
nn.MultiheadAttention(batch_first=True) with a packed in_proj_weight, a ReLU FFN of width 4d,
a final LayerNorm, sqrt(d) input scaling plus the fairseq sinusoidal positional table
(sin block then cos block, positions 1..T, frequencies exp(-k ln(10000) / (half - 1))), and
the shifted causal mask triu(1 + |T_src - T_q|). State_dict names are MulT's (and mmfuse's).

    python3 tools/golden/make_fusion_mult_fixtures.py [--out tests/data/golden]

Cases (each folder: params.txt, f64/ and f32/ with inputs, parameters, masks in MMFUSE
polarity (true = KEEP / a real step), y, dy, grad_<input>, grad_<parameter>):
    fusion_mult_cm_causal    one CM transformer, 2 layers, T_q = 3, T_src = 5, causal
    fusion_mult_cm_padding   one CM transformer, 2 layers, T_q = T_src = 4, causal, source
                             key padding (source_keep.npy)
    fusion_mult_3mod         the interaction over 3 modalities (names l, a, v; T 3, 4, 5),
                             1 layer per pair, causal, key padding of modality a (keep_a.npy);
                             outputs y_l, y_a, y_v, cotangents dy_l, dy_a, dy_v
Parameters are random (not MulT's init) so that biases and norm weights are tested. The
positional table is computed in float64 and rounded for the f32 folder (MulT computes it in
float32). No query row is ever fully masked (PyTorch would give NaN; the generator asserts).
"""
import math
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main  # noqa: E402  (one fixture layout)

B, D, H = 2, 4, 2


def position_table(t, d, dtype):
    half = d // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))
    ang = torch.arange(1, t + 1, dtype=torch.float64)[:, None] * freq[None, :]
    pe = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    if d % 2 == 1:
        pe = torch.cat([pe, torch.zeros(t, 1, dtype=torch.float64)], dim=1)
    return pe.to(dtype)


class CrossmodalLayer(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h, batch_first=True)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(d), nn.LayerNorm(d)])

    def forward(self, x, s, kpm, attn_mask):
        q = self.layer_norms[0](x)
        k = self.layer_norms[0](s)
        x = x + self.self_attn(q, k, k, key_padding_mask=kpm, attn_mask=attn_mask,
                               need_weights=False)[0]
        return x + self.fc2(F.relu(self.fc1(self.layer_norms[1](x))))


class CrossmodalTransformer(nn.Module):
    def __init__(self, d, h, layers, causal=True):
        super().__init__()
        self.d = d
        self.causal = causal
        self.layers = nn.ModuleList([CrossmodalLayer(d, h) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, zq, zs, keep=None):
        tq, ts = zq.shape[1], zs.shape[1]
        scale = math.sqrt(self.d)
        x = scale * zq + position_table(tq, self.d, zq.dtype)
        s = scale * zs + position_table(ts, self.d, zs.dtype)
        mask = None
        if self.causal:  # PyTorch polarity: True = forbidden
            mask = torch.ones(tq, ts, dtype=torch.bool).triu(1 + abs(ts - tq))
        kpm = None if keep is None else ~keep
        check_rows(keep, mask, tq, ts)
        for layer in self.layers:
            x = layer(x, s, kpm, mask)
        return self.layer_norm(x)


class MulT(nn.Module):
    """The interaction: y_a = [CM_{b->a}(x_a, x_b) for b != a]."""

    def __init__(self, names, d, h, layers):
        super().__init__()
        self.names = names
        for a in names:
            for b in names:
                if a != b:
                    setattr(self, f"trans_{a}_with_{b}", CrossmodalTransformer(d, h, layers))

    def forward(self, xs, keeps):
        ys = {}
        for a in self.names:
            ys[a] = torch.cat([getattr(self, f"trans_{a}_with_{b}")(xs[a], xs[b], keeps.get(b))
                               for b in self.names if b != a], dim=-1)
        return ys


def check_rows(keep, forbid, tq, ts):
    full = torch.ones(B, tq, ts, dtype=torch.bool)
    if keep is not None:
        full &= keep[:, None, :]
    if forbid is not None:
        full &= ~forbid
    assert bool(full.any(dim=-1).all()), "a query row would be fully masked"



def rnd(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# Each case: (module, inputs: name -> f64 tensor, masks: name -> bool tensor,
#             forward(module, inputs, masks) -> {output name: tensor}).

def case_cm_causal(g):
    m = CrossmodalTransformer(D, H, 2)
    i = {"zq": rnd(g, B, 3, D), "zs": rnd(g, B, 5, D)}
    return m, i, {}, lambda m, i, k: {"y": m(i["zq"], i["zs"])}


def case_cm_padding(g):
    m = CrossmodalTransformer(D, H, 2)
    i = {"zq": rnd(g, B, 4, D), "zs": rnd(g, B, 4, D)}
    keep = torch.tensor([[True, True, False, False], [True, True, True, False]])
    return m, i, {"source_keep": keep}, \
        lambda m, i, k: {"y": m(i["zq"], i["zs"], k["source_keep"])}


def case_3mod(g):
    names = ["l", "a", "v"]
    m = MulT(names, D, H, 1)
    i = {"x_l": rnd(g, B, 3, D), "x_a": rnd(g, B, 4, D), "x_v": rnd(g, B, 5, D)}
    keep = torch.tensor([[True, True, True, False], [True, True, False, False]])

    def fwd(m, i, k):
        ys = m({n: i["x_" + n] for n in names}, {"a": k["keep_a"]})
        return {"y_" + n: ys[n] for n in names}

    return m, i, {"keep_a": keep}, fwd


CASES = {
    "fusion_mult_cm_causal": case_cm_causal,
    "fusion_mult_cm_padding": case_cm_padding,
    "fusion_mult_3mod": case_3mod,
}





if __name__ == "__main__":
    main(CASES, 20240900, __doc__.split("\n")[0])
