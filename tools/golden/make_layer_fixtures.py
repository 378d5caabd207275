#!/usr/bin/env python3
"""Golden fixtures: PyTorch twins of mmfuse's layers (tests/nn/test_golden.cpp, tag [golden]).

Make the fixtures (needs torch >= 2.4 for nn.RMSNorm, and numpy; CPU is enough):

    python3 tools/golden/make_layer_fixtures.py [--out tests/data/golden]

For every case below it writes `<out>/<case>/params.txt` (the twin's state_dict names, one a
line, in state_dict order) and, in `<out>/<case>/f64/` and `<out>/<case>/f32/` (the same case
computed by PyTorch in float64 and in float32):

    <input>.npy        every input (x.npy, query.npy, key.npy, value.npy, context.npy)
    <name>.npy         every parameter under its state_dict name (in_proj_weight.npy,
                       out_proj.weight.npy, linear1.bias.npy, ...)
    key_padding.npy    bool masks in MMFUSE polarity (true = KEEP; PyTorch's
    attn.npy           key_padding_mask / bool attn_mask are their negation)
    attn_bias.npy      additive float attention mask (PyTorch's float attn_mask)
    y.npy              the output
    dy.npy             a fixed cotangent
    grad_<input>.npy   d sum(y * dy) / d input
    grad_<name>.npy    d sum(y * dy) / d parameter

All values are drawn in float64 from fixed seeds; the float32 folder holds the same values
rounded to float32 (parameters and inputs), with PyTorch's float32 results. Parameters are
random (not PyTorch's init: zero biases and unit LayerNorm weights would test less).
Dropout is 0 everywhere. Masks never mask every key of a query row: PyTorch returns NaN for
such a row while mmfuse returns attention weights 0 (a documented deviation), so fully
masked rows are excluded from the golden data (the generator asserts it).
"""
import argparse
import copy
import pathlib
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

B, E, H = 2, 8, 2


class CrossAttentionBlock(nn.Module):
    """Twin of mmfuse::nn::cross_attention_block (same attribute names, see its header)."""

    def __init__(self, e, h, ff, ec, act, norm_first):
        super().__init__()
        self.cross_attn = nn.MultiheadAttention(e, h, kdim=ec, vdim=ec, batch_first=True)
        self.linear1 = nn.Linear(e, ff)
        self.linear2 = nn.Linear(ff, e)
        self.norm1 = nn.LayerNorm(e)
        self.norm2 = nn.LayerNorm(e)
        self.act = act
        self.norm_first = norm_first

    def forward(self, x, ctx, ctx_keep=None):
        kpm = None if ctx_keep is None else ~ctx_keep

        def att(q):
            return self.cross_attn(q, ctx, ctx, key_padding_mask=kpm, need_weights=False)[0]

        def ffn(h):
            return self.linear2(self.act(self.linear1(h)))

        if self.norm_first:
            x = x + att(self.norm1(x))
            return x + ffn(self.norm2(x))
        x = self.norm1(x + att(x))
        return self.norm2(x + ffn(x))


def randomise(module, gen):
    """Random parameters: norm weights 1 + 0.2 N(0, 1), everything else 0.3 N(0, 1)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            is_norm_weight = name.endswith("weight") and p.dim() == 1
            p.copy_(1.0 + 0.2 * r if is_norm_weight else 0.3 * r)


def keep_mask_ok(keep):
    """True when every query row (last axis = keys) keeps at least one key."""
    return bool(keep.any(dim=-1).all())


def check_rows(kp_keep, attn_keep, lq, lk, causal=False):
    """Asserts that the combined mmfuse keep-mask (B, H, Lq, Lk) masks no full query row."""
    full = torch.ones(B, H, lq, lk, dtype=torch.bool)
    if kp_keep is not None:
        full &= kp_keep[:, None, None, :]
    if attn_keep is not None:
        full &= attn_keep.reshape(-1, lq, lk).reshape(B if attn_keep.dim() == 3 else 1,
                                                      H if attn_keep.dim() == 3 else 1, lq, lk)
    if causal:
        full &= torch.ones(lq, lk, dtype=torch.bool).tril()
    assert keep_mask_ok(full), "a query row would be fully masked (PyTorch gives NaN)"


# ---- cases -------------------------------------------------------------------------------
# Each returns (module, inputs: dict name -> float64 tensor, masks: dict name -> tensor,
# forward(module, inputs, masks) -> y). Masks are saved as they are (mmfuse polarity).


def case_linear(g):
    m = nn.Linear(E, 6)
    return m, {"x": torch.randn(B, 5, E, generator=g, dtype=torch.float64)}, {}, \
        lambda m, i, k: m(i["x"])


def case_layer_norm(g):
    m = nn.LayerNorm(E, eps=1e-5)
    x = 0.5 + 2.0 * torch.randn(B, 4, E, generator=g, dtype=torch.float64)
    return m, {"x": x}, {}, lambda m, i, k: m(i["x"])


def case_rms_norm(g):
    # eps=None: torch.finfo(dtype).eps. Rows scaled 1e-4 and 1e-8 make the float32 and the
    # float64 eps (1.19e-7, 2.2e-16) change the result, so the default is really tested.
    m = nn.RMSNorm(E)
    x = torch.randn(B, 4, E, generator=g, dtype=torch.float64)
    x[0, 1] *= 1e-4
    x[1, 2] *= 1e-8
    return m, {"x": x}, {}, lambda m, i, k: m(i["x"])


def case_activation(kind):
    fns = {
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }

    def make(g):
        x = 2.0 * torch.randn(B, 3, E, generator=g, dtype=torch.float64)
        return nn.Module(), {"x": x}, {}, lambda m, i, k: fns[kind](i["x"])

    return make


class MLP(nn.Module):
    """Twin of mmfuse::nn::mlp (fc1, act, fc2)."""

    def __init__(self, i, h, o, act):
        super().__init__()
        self.fc1 = nn.Linear(i, h)
        self.act = act
        self.fc2 = nn.Linear(h, o)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def case_mlp_gelu(g):
    m = MLP(E, 16, 6, nn.GELU())
    return m, {"x": torch.randn(B, 3, E, generator=g, dtype=torch.float64)}, {}, \
        lambda m, i, k: m(i["x"])


def mha(**kw):
    return nn.MultiheadAttention(E, H, batch_first=True, **kw)


def mha_call(m, q, k, v, masks):
    kp = masks.get("key_padding")
    am = masks.get("attn")
    ab = masks.get("attn_bias")
    attn_mask = ~am if am is not None else ab
    return m(q, k, v, key_padding_mask=None if kp is None else ~kp, attn_mask=attn_mask,
             need_weights=False)[0]


def case_mha_self(g):
    x = torch.randn(B, 5, E, generator=g, dtype=torch.float64)
    return mha(), {"x": x}, {}, lambda m, i, k: mha_call(m, i["x"], i["x"], i["x"], k)


def case_mha_cross(g):
    # Lq = 3, Lk = 5, kdim = 6, vdim = 4: separate q/k/v_proj_weight.
    m = mha(kdim=6, vdim=4)
    i = {"query": torch.randn(B, 3, E, generator=g, dtype=torch.float64),
         "key": torch.randn(B, 5, 6, generator=g, dtype=torch.float64),
         "value": torch.randn(B, 5, 4, generator=g, dtype=torch.float64)}
    return m, i, {}, lambda m, i, k: mha_call(m, i["query"], i["key"], i["value"], k)


def case_mha_key_padding(g):
    # Self attention; sample 0 keeps 3 of 5 keys, sample 1 keeps 4 (padded queries still
    # attend to the kept keys, so no row is fully masked).
    x = torch.randn(B, 5, E, generator=g, dtype=torch.float64)
    kp = torch.tensor([[True, True, False, True, False], [True, True, True, True, False]])
    check_rows(kp, None, 5, 5)
    return mha(), {"x": x}, {"key_padding": kp}, \
        lambda m, i, k: mha_call(m, i["x"], i["x"], i["x"], k)


def case_mha_cross_key_padding(g):
    # Cross attention (kdim = vdim = 6 != E), Lq = 4, Lk = 3, key padding on the keys.
    m = mha(kdim=6, vdim=6)
    i = {"query": torch.randn(B, 4, E, generator=g, dtype=torch.float64),
         "key": torch.randn(B, 3, 6, generator=g, dtype=torch.float64),
         "value": torch.randn(B, 3, 6, generator=g, dtype=torch.float64)}
    kp = torch.tensor([[True, False, True], [False, True, True]])
    check_rows(kp, None, 4, 3)
    return m, i, {"key_padding": kp}, \
        lambda m, i, k: mha_call(m, i["query"], i["key"], i["value"], k)


def case_mha_bool_mask(g):
    # Per (batch, head) boolean mask (B*H, Lq, Lk), batch-major, plus key padding.
    x = torch.randn(B, 4, E, generator=g, dtype=torch.float64)
    while True:
        am = torch.rand(B * H, 4, 4, generator=g, dtype=torch.float64) < 0.6
        kp = torch.tensor([[True, True, True, False], [True, False, True, True]])
        try:
            check_rows(kp, am, 4, 4)
            break
        except AssertionError:
            continue
    return mha(), {"x": x}, {"attn": am, "key_padding": kp}, \
        lambda m, i, k: mha_call(m, i["x"], i["x"], i["x"], k)


def case_mha_float_mask(g):
    # Additive (Lq, Lk) mask with finite values and a few -inf (never a whole row).
    x = torch.randn(B, 4, E, generator=g, dtype=torch.float64)
    ab = torch.randn(4, 4, generator=g, dtype=torch.float64)
    ab[0, 3] = ab[2, 0] = ab[2, 1] = float("-inf")
    assert bool(torch.isfinite(ab).any(dim=-1).all())
    return mha(), {"x": x}, {"attn_bias": ab}, \
        lambda m, i, k: mha_call(m, i["x"], i["x"], i["x"], k)


def case_mha_causal(g):
    # mmfuse's `causal` flag is a real mask: the twin gets an explicit triangular bool mask.
    x = torch.randn(B, 5, E, generator=g, dtype=torch.float64)

    def fwd(m, i, k):
        causal = torch.ones(5, 5, dtype=torch.bool).triu(1)  # PyTorch: true = ignore
        return m(i["x"], i["x"], i["x"], attn_mask=causal, need_weights=False)[0]

    return mha(), {"x": x}, {}, fwd


def case_mha_cross_causal(g):
    # Causal with Lq = 3 < Lk = 5 (top-left aligned: query i sees keys j <= i).
    m = mha(kdim=6, vdim=6)
    i = {"query": torch.randn(B, 3, E, generator=g, dtype=torch.float64),
         "key": torch.randn(B, 5, 6, generator=g, dtype=torch.float64),
         "value": torch.randn(B, 5, 6, generator=g, dtype=torch.float64)}

    def fwd(m, i, k):
        causal = ~torch.ones(3, 5, dtype=torch.bool).tril()
        return m(i["query"], i["key"], i["value"], attn_mask=causal, need_weights=False)[0]

    return m, i, {}, fwd


def encoder(activation, norm_first, key_padding=False, causal=False):
    def make(g):
        m = nn.TransformerEncoderLayer(E, H, dim_feedforward=16, dropout=0.0,
                                       activation=activation, batch_first=True,
                                       norm_first=norm_first)
        x = torch.randn(B, 5, E, generator=g, dtype=torch.float64)
        masks = {}
        if key_padding:
            masks["key_padding"] = torch.tensor([[True, True, True, False, False],
                                                 [True, True, True, True, True]])
            check_rows(masks["key_padding"], None, 5, 5, causal)

        def fwd(m, i, k):
            kp = k.get("key_padding")
            src_mask = torch.ones(5, 5, dtype=torch.bool).triu(1) if causal else None
            return m(i["x"], src_mask=src_mask, is_causal=causal,
                     src_key_padding_mask=None if kp is None else ~kp)

        return m, {"x": x}, masks, fwd

    return make


def cross_block(norm_first, ec, act, key_padding=False):
    def make(g):
        m = CrossAttentionBlock(E, H, 16, ec, act, norm_first)
        i = {"x": torch.randn(B, 3, E, generator=g, dtype=torch.float64),
             "context": torch.randn(B, 4, ec, generator=g, dtype=torch.float64)}
        masks = {}
        if key_padding:
            masks["key_padding"] = torch.tensor([[True, False, True, True],
                                                 [True, True, True, False]])
            check_rows(masks["key_padding"], None, 3, 4)
        return m, i, masks, lambda m, i, k: m(i["x"], i["context"], k.get("key_padding"))

    return make


CASES = {
    "linear": case_linear,
    "layer_norm": case_layer_norm,
    "rms_norm": case_rms_norm,
    **{f"activation_{k}": case_activation(k)
       for k in ("relu", "gelu", "gelu_tanh", "silu", "sigmoid", "tanh")},
    "mlp_gelu": case_mlp_gelu,
    "mha_self": case_mha_self,
    "mha_cross": case_mha_cross,
    "mha_key_padding": case_mha_key_padding,
    "mha_cross_key_padding": case_mha_cross_key_padding,
    "mha_bool_mask": case_mha_bool_mask,
    "mha_float_mask": case_mha_float_mask,
    "mha_causal": case_mha_causal,
    "mha_cross_causal": case_mha_cross_causal,
    "encoder_post_relu": encoder("relu", False),
    "encoder_post_gelu_key_padding": encoder("gelu", False, key_padding=True),
    "encoder_pre_relu_causal": encoder("relu", True, causal=True),
    "encoder_pre_gelu": encoder("gelu", True),
    "cross_block_pre_gelu": cross_block(True, 6, F.gelu),
    "cross_block_post_relu_key_padding": cross_block(False, E, F.relu, key_padding=True),
}


def save(path, t):
    a = t.detach().cpu().numpy()
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    np.save(path, a)


def outputs_by_name(ys):
    """A forward's outputs as {file stem: tensor}: one tensor is "y"; a list or tuple is "y"
    (one element) or "y0", "y1", ...; a dict keeps its names."""
    if isinstance(ys, torch.Tensor):
        return {"y": ys}
    if isinstance(ys, (list, tuple)):
        return {"y" if len(ys) == 1 else f"y{i}": y for i, y in enumerate(ys)}
    return dict(ys)


def make_case(out, name, factory, seed, randomise=randomise):
    """Writes case `name`: `factory(g)` returns (twin module, inputs {name: f64 tensor},
    masks {name: tensor}, forward(module, inputs, masks) -> outputs (see outputs_by_name)).
    For every output `k` the case holds k.npy and the cotangent dk.npy; the loss is
    sum_k sum(k * dk); every input and parameter gets grad_<name>.npy."""
    g = torch.Generator().manual_seed(seed)
    module, inputs, masks, fwd = factory(g)
    module = module.double()
    randomise(module, g)
    names = [n for n, _ in module.named_parameters()]
    assert names == list(module.state_dict().keys()), "buffers in a twin"
    case_dir = out / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    (case_dir / "params.txt").write_text("".join(n + "\n" for n in names))
    dys64 = None
    for sub, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        d = case_dir / sub
        d.mkdir()
        m = copy.deepcopy(module).to(dtype).train()
        ins = {k: v.detach().to(dtype).clone().requires_grad_(True) for k, v in inputs.items()}
        ms = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in masks.items()}
        ys = outputs_by_name(fwd(m, ins, ms))
        if dys64 is None:
            dys64 = {k: torch.randn(y.shape, generator=g, dtype=torch.float64)
                     for k, y in ys.items()}
        loss = 0
        for k, y in ys.items():
            assert bool(torch.isfinite(y).all()), f"{name}: non-finite output {k}"
            loss = loss + (y * dys64[k].to(dtype)).sum()
        loss.backward()
        for k, v in ins.items():
            save(d / f"{k}.npy", v)
            save(d / f"grad_{k}.npy", v.grad)
        for k, v in ms.items():
            save(d / f"{k}.npy", v)
        for n, p in m.named_parameters():
            save(d / f"{n}.npy", p)
            assert p.grad is not None, f"{name}: no gradient for {n}"
            save(d / f"grad_{n}.npy", p.grad)
        for k, y in ys.items():
            save(d / f"{k}.npy", y)
            save(d / f"d{k}.npy", dys64[k].to(dtype))


def main(cases=None, first_seed=20240700, description=None, make=make_case):
    """Command line of every fixture generator: --out (default tests/data/golden); case n of
    `cases` is made with seed first_seed + n by `make(out, name, factory, seed)`."""
    cases = CASES if cases is None else cases
    ap = argparse.ArgumentParser(description=description or __doc__.split("\n")[0])
    here = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path, default=here / "tests" / "data" / "golden")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    for n, (name, factory) in enumerate(cases.items()):
        make(args.out, name, factory, first_seed + n)
    total = sum(p.stat().st_size for name in cases for p in (args.out / name).rglob("*")
                if p.is_file())
    print(f"{len(cases)} cases, {total} bytes in {args.out} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
