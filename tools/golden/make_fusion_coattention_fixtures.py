#!/usr/bin/env python3
"""Golden fixtures for mmfuse's co-attention fusion (tests/fusion/test_coattention.cpp).

PyTorch twins written from the equations of the reference catalogue (docs/fusion.md,
/work/shared/reference/fusion.md sections 4.2 and 4.6), not from the reference repositories:

  fusion_coattention_vilbert  ViLBERT Co-TRM layer (Lu et al., NeurIPS 2019): visual (2, 3, 6),
                              text (2, 4, 5), bi-attention width 4 with 2 heads (differs from
                              both stream widths), FFN 7 / 3, key padding in both streams
  fusion_coattention_qformer  BLIP-2 Q-Former query path (Li et al., ICML 2023): 2 queries of
                              width 4, 2 heads, FFN 6, 2 layers, cross_attention_freq 2 (only
                              layer 0 cross-attends), image tokens (2, 5, 6) with padding

Run (CPU is enough):

    python3 tools/golden/make_fusion_coattention_fixtures.py [--out tests/data/golden]

Layout per case (as tools/golden/make_layer_fixtures.py): params.txt (state_dict names, in
order, equal to mmfuse's parameter names), and f64/, f32/ with every input, every parameter
by name, masks in mmfuse polarity (true = KEEP), the outputs y*.npy, fixed cotangents dy*.npy,
and grad_<input>.npy, grad_<parameter>.npy of sum(y * dy) summed over the outputs.
Attention masks are BERT's additive (1 - keep) * -10000, which underflows to exact zeros
after the softmax in both precisions, so they equal mmfuse's boolean masks. No query row is
fully masked. Parameters are random (norm weights 1 + 0.2 N(0, 1), others 0.3 N(0, 1)).
"""
import math
import pathlib
import sys

import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main  # noqa: E402  (one fixture layout)

EPS = 1e-12


def heads(x, h):
    b, n, d = x.shape
    return x.reshape(b, n, h, d // h).transpose(1, 2)


def attend(q, k, v, keep, h):
    """softmax(q k^T / sqrt(dh) + (1 - keep) * -10000) v per head, heads concatenated."""
    b, lq, e = q.shape
    s = heads(q, h) @ heads(k, h).transpose(-1, -2) / math.sqrt(e // h)
    if keep is not None:
        s = s + (1.0 - keep.to(s.dtype))[:, None, None, :] * -10000.0
    o = s.softmax(-1) @ heads(v, h)
    return o.transpose(1, 2).reshape(b, lq, e)


# ---- ViLBERT co-attention ------------------------------------------------------------------


class CoStream(nn.Module):
    """One stream's parameters: its q/k/v projections to the bi width, the output dense of the
    attention it receives, norm1, its FFN (GELU) and norm2 (post-LN, eps 1e-12)."""

    def __init__(self, d, bi, ff):
        super().__init__()
        self.query = nn.Linear(d, bi)
        self.key = nn.Linear(d, bi)
        self.value = nn.Linear(d, bi)
        self.dense = nn.Linear(bi, d)
        self.norm1 = nn.LayerNorm(d, eps=EPS)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm2 = nn.LayerNorm(d, eps=EPS)

    def finish(self, x, c):
        x1 = self.norm1(x + self.dense(c))
        return self.norm2(x1 + self.linear2(nn.functional.gelu(self.linear1(x1))))


class CoAttention(nn.Module):
    def __init__(self, dv, dt, bi, h, ffv, fft):
        super().__init__()
        self.visual = CoStream(dv, bi, ffv)
        self.text = CoStream(dt, bi, fft)
        self.h = h

    def forward(self, v, t, keep_v=None, keep_t=None):
        # Simultaneous update: both contexts from the pre-update inputs.
        c_t = attend(self.text.query(t), self.visual.key(v), self.visual.value(v), keep_v, self.h)
        c_v = attend(self.visual.query(v), self.text.key(t), self.text.value(t), keep_t, self.h)
        return self.visual.finish(v, c_v), self.text.finish(t, c_t)


def case_vilbert(g):
    m = CoAttention(6, 5, 4, 2, 7, 3)
    ins = {"visual": torch.randn(2, 3, 6, generator=g, dtype=torch.float64),
           "text": torch.randn(2, 4, 5, generator=g, dtype=torch.float64)}
    masks = {"key_padding_visual": torch.tensor([[True, True, False], [True, True, True]]),
             "key_padding_text": torch.tensor([[True, True, True, False], [True, False, True, True]])}

    def fwd(m, i, k):
        yv, yt = m(i["visual"], i["text"], k["key_padding_visual"], k["key_padding_text"])
        return {"y_visual": yv, "y_text": yt}

    return m, ins, masks, fwd


# ---- BLIP-2 Q-Former -----------------------------------------------------------------------


class BertAttention(nn.Module):
    """BERT self/cross attention + output dense, with nn.MultiheadAttention's parameter names
    (packed in_proj_weight when the key width equals the query width, else q/k/v_proj_weight;
    in_proj_bias; out_proj = BERT's output dense)."""

    def __init__(self, d, h, dk):
        super().__init__()
        self.d, self.h, self.packed = d, h, dk == d
        if self.packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(d, d))
            self.k_proj_weight = nn.Parameter(torch.empty(d, dk))
            self.v_proj_weight = nn.Parameter(torch.empty(d, dk))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, ctx, keep=None):
        d = self.d
        if self.packed:
            wq, wk, wv = self.in_proj_weight.split(d)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.split(d)
        q, k, v = x @ wq.T + bq, ctx @ wk.T + bk, ctx @ wv.T + bv
        return self.out_proj(attend(q, k, v, keep, self.h))


class QFormerLayer(nn.Module):
    def __init__(self, d, h, ff, dimg, cross):
        super().__init__()
        self.self_attn = BertAttention(d, h, d)
        if cross:
            self.cross_attn = BertAttention(d, h, dimg)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d, eps=EPS)
        if cross:
            self.cross_norm = nn.LayerNorm(d, eps=EPS)
        self.norm2 = nn.LayerNorm(d, eps=EPS)
        self.cross = cross

    def forward(self, hq, img, keep):
        hq = self.norm1(hq + self.self_attn(hq, hq))
        if self.cross:
            hq = self.cross_norm(hq + self.cross_attn(hq, img, keep))
        return self.norm2(hq + self.linear2(nn.functional.gelu(self.linear1(hq))))


class QFormer(nn.Module):
    def __init__(self, d, h, ff, dimg, nq, layers, freq):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.empty(1, nq, d))
        self.norm = nn.LayerNorm(d, eps=EPS)
        self.layers = nn.ModuleList(
            [QFormerLayer(d, h, ff, dimg, i % freq == 0) for i in range(layers)])

    def forward(self, img, keep=None):
        hq = self.norm(self.query_tokens.expand(img.shape[0], -1, -1))
        for layer in self.layers:
            hq = layer(hq, img, keep)
        return hq


def case_qformer(g):
    m = QFormer(4, 2, 6, 6, 2, 2, 2)
    ins = {"image": torch.randn(2, 5, 6, generator=g, dtype=torch.float64)}
    masks = {"key_padding": torch.tensor([[True, True, True, False, False],
                                          [True, True, True, True, True]])}
    return m, ins, masks, lambda m, i, k: {"y": m(i["image"], k["key_padding"])}


CASES = {
    "fusion_coattention_vilbert": case_vilbert,
    "fusion_coattention_qformer": case_qformer,
}






if __name__ == "__main__":
    main(CASES, 20250412, __doc__.split("\n")[0])
