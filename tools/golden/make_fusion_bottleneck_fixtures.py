#!/usr/bin/env python3
"""Golden fixtures for mmfuse/fusion/bottleneck.hpp and flamingo.hpp
(tests/fusion/test_bottleneck.cpp, tag [golden]).

    python3 tools/golden/make_fusion_bottleneck_fixtures.py [--out tests/data/golden]

PyTorch twins written from the equations of docs/fusion.md (4.3 MBT, 4.4 Flamingo gated
cross-attention, 4.5 Perceiver Resampler), with state_dict names equal to mmfuse's parameter
names. Layout as tools/golden/make_layer_fixtures.py (params.txt; f64/ and f32/ folders with
every input, parameter, output y*, cotangent dy*, grad_<input>, grad_<parameter>), plus:

    presence.npy            bool (B, M), true = modality present
    key_padding<m>.npy      bool (B, T_m), true = real token (mmfuse polarity)

Cases
    fusion_bottleneck_mbt           2 modalities, D 4, 2 heads, FF 8, T 3 / 2, 2 bottleneck
                                    tokens, 3 layers, fusion_layer 1 (3 layers, not 2: the
                                    bottleneck mean of the last layer is discarded, so with
                                    fusion_layer = L - 1 the outputs would not interact);
                                    padding in both modalities, modality 1 absent in
                                    sample 1 (B 3)
    fusion_bottleneck_gated_xattn   D 4, media width 3, 2 heads x dim_head 3 (inner 6 != D),
                                    T 3, 4 media tokens with padding, non-zero gates; media
                                    absent in sample 2, text absent in sample 1 (B 4)
    fusion_bottleneck_resampler     D 4, depth 2, 3 latents, 2 heads x dim_head 3, ff_mult 2,
                                    5 media tokens with padding (B 2)
Masks never mask every key of a row (PyTorch/Flamingo semantics differ from mmfuse there).
"""
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main  # noqa: E402  (one fixture layout)


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


class MBT(nn.Module):
    """Bottleneck fusion (fusion.md 4.3) over M streams of pre-LN encoder layers."""

    def __init__(self, m, d, h, ff, layers, fusion_layer, nb):
        super().__init__()
        self.bottleneck = nn.Parameter(0.02 * torch.randn(1, nb, d))
        self.encoders = nn.ModuleList([
            nn.ModuleList([nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, activation=gelu_tanh,
                                                      layer_norm_eps=1e-6, batch_first=True,
                                                      norm_first=True)
                           for _ in range(layers)])
            for _ in range(m)])
        self.fusion_layer = fusion_layer

    def forward(self, xs, keeps, presence):
        bsz, nb = xs[0].shape[0], self.bottleneck.shape[1]
        w = presence.to(xs[0].dtype)
        w = w / w.sum(1, keepdim=True).clamp_min(1.0)  # renormalised mean over present ones
        b = self.bottleneck.expand(bsz, -1, -1)
        xs = list(xs)
        for l in range(len(self.encoders[0])):
            if l < self.fusion_layer:
                xs = [enc[l](x, src_key_padding_mask=~k) for enc, x, k in
                      zip(self.encoders, xs, keeps)]
                continue
            bs = []
            for m, (enc, x, k) in enumerate(zip(self.encoders, xs, keeps)):
                t = x.shape[1]
                kp = ~torch.cat([k, torch.ones(bsz, nb, dtype=torch.bool)], 1)
                y = enc[l](torch.cat([x, b], 1), src_key_padding_mask=kp)
                xs[m] = y[:, :t]
                bs.append(y[:, t:])
            b = sum(w[:, m, None, None] * bm for m, bm in enumerate(bs))
        return [x * presence[:, m, None, None].to(x.dtype) for m, x in enumerate(xs)]


def attend(q, k, v, heads, keep):
    """Flamingo attention: q (B, Lq, h*d), k, v (B, Lk, h*d); keep (B, Lk) True = attend."""
    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    q = q * q.shape[-1] ** -0.5
    sim = q @ k.transpose(-1, -2)
    if keep is not None:
        sim = sim.masked_fill(~keep[:, None, None, :], -torch.finfo(sim.dtype).max)
    out = sim.softmax(-1) @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def feed_forward(d, mult):
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mult * d, bias=False), nn.GELU(),
                         nn.Linear(mult * d, d, bias=False))


class MaskedCrossAttention(nn.Module):
    def __init__(self, d, dv, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, inner, bias=False)
        self.to_kv = nn.Linear(dv, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, d, bias=False)

    def forward(self, x, media, keep):
        k, v = self.to_kv(media).chunk(2, dim=-1)
        return self.to_out(attend(self.to_q(self.norm(x)), k, v, self.heads, keep))


class GatedCrossAttention(nn.Module):
    """GATED XATTN-DENSE (fusion.md 4.4), one media item per sample, presence (B, 2)."""

    def __init__(self, d, dv, heads, dim_head, mult):
        super().__init__()
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))
        self.attn = MaskedCrossAttention(d, dv, heads, dim_head)
        self.ff = feed_forward(d, mult)

    def forward(self, x, media, keep, presence):
        pm = presence[:, 1, None, None].to(x.dtype)
        x = x + self.attn_gate.tanh() * pm * self.attn(x, media, keep)
        x = x + self.ff_gate.tanh() * pm * self.ff(x)
        return x * presence[:, 0, None, None].to(x.dtype)


class PerceiverAttention(nn.Module):
    def __init__(self, d, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_media = nn.LayerNorm(d)
        self.norm_latents = nn.LayerNorm(d)
        self.to_q = nn.Linear(d, inner, bias=False)
        self.to_kv = nn.Linear(d, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, d, bias=False)

    def forward(self, x, latents, keep):
        x, lat = self.norm_media(x), self.norm_latents(latents)
        k, v = self.to_kv(torch.cat([x, lat], dim=1)).chunk(2, dim=-1)
        if keep is not None:
            keep = torch.cat([keep, torch.ones(keep.shape[0], lat.shape[1], dtype=torch.bool)], 1)
        return self.to_out(attend(self.to_q(lat), k, v, self.heads, keep))


class PerceiverResampler(nn.Module):
    """Perceiver Resampler (fusion.md 4.5), one media item per sample, no time embeddings."""

    def __init__(self, d, depth, n_lat, heads, dim_head, mult):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_lat, d))
        self.layers = nn.ModuleList([nn.ModuleList([PerceiverAttention(d, heads, dim_head),
                                                    feed_forward(d, mult)])
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(d)

    def forward(self, x, keep):
        lat = self.latents.expand(x.shape[0], -1, -1)
        for attn, ff in self.layers:
            lat = attn(x, lat, keep) + lat
            lat = ff(lat) + lat
        return self.norm(lat)


def case_mbt(g):
    m = MBT(2, 4, 2, 8, 3, 1, 2)
    ins = {"x0": torch.randn(3, 3, 4, generator=g, dtype=torch.float64),
           "x1": torch.randn(3, 2, 4, generator=g, dtype=torch.float64)}
    masks = {"key_padding0": torch.tensor([[True, True, False], [True, True, True],
                                           [True, False, False]]),
             "key_padding1": torch.tensor([[True, True], [True, False], [True, True]]),
             "presence": torch.tensor([[True, True], [True, False], [True, True]])}
    return m, ins, masks, lambda m, i, k: m([i["x0"], i["x1"]],
                                            [k["key_padding0"], k["key_padding1"]],
                                            k["presence"])


def case_gated(g):
    m = GatedCrossAttention(4, 3, 2, 3, 4)
    ins = {"x": torch.randn(4, 3, 4, generator=g, dtype=torch.float64),
           "media": torch.randn(4, 4, 3, generator=g, dtype=torch.float64)}
    masks = {"key_padding1": torch.tensor([[True, True, True, False], [True, False, True, True],
                                           [False, False, False, False],
                                           [True, True, True, True]]),
             "presence": torch.tensor([[True, True], [False, True], [True, False],
                                       [True, True]])}
    return m, ins, masks, lambda m, i, k: [m(i["x"], i["media"], k["key_padding1"],
                                             k["presence"])]


def case_resampler(g):
    m = PerceiverResampler(4, 2, 3, 2, 3, 2)
    ins = {"x": torch.randn(2, 5, 4, generator=g, dtype=torch.float64)}
    masks = {"key_padding0": torch.tensor([[True, True, True, False, False],
                                           [True, True, True, True, True]])}
    return m, ins, masks, lambda m, i, k: [m(i["x"], k["key_padding0"])]


CASES = {
    "fusion_bottleneck_mbt": case_mbt,
    "fusion_bottleneck_gated_xattn": case_gated,
    "fusion_bottleneck_resampler": case_resampler,
}




if __name__ == "__main__":
    main(CASES, 20240960, __doc__.split("\n")[0])
