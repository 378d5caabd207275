#!/usr/bin/env python3
"""Golden fixtures: PyTorch twins of mmfuse's bilinear fusers (fusion/bilinear.hpp: mfb, mutan;
tests/fusion/test_bilinear.cpp, tag [golden]).

Make the fixtures (torch and numpy; CPU is enough):

    python3 tools/golden/make_fusion_bilinear_fixtures.py [--out tests/data/golden]

The layout is make_layer_fixtures.py's (its `make_case` writes it): per case
`<out>/<case>/params.txt` and `f64/`, `f32/` with x0.npy, x1.npy, presence.npy (bool (B, 2),
true = present), every parameter by state_dict name, y.npy, dy.npy, grad_x0.npy,
grad_x1.npy and grad_<parameter>.npy.

The twins are written from the equations of fusion.md (2.9 MFB, 2.11 MUTAN), with MMF's
attribute names (facebookresearch/mmf : mmf/modules/fusions.py) and mmfuse's missing-modality
rule: the factor of the Hadamard product that comes from an absent modality is multiplied by
0 for that sample. Power normalisation is sqrt(relu(z)) - sqrt(relu(-z)) then F.normalize;
samples with an absent modality have z = 0 exactly, where autograd's derivative is 0 (relu's
backward selects 0 and drops sqrt's infinite slope), mmfuse's documented value. Present
samples use tanh input activations in the normalised cases (both signs of z), and a case is
redrawn (seed + 1000) until every present |z| >= 0.05, so no present z is near 0.

Cases:
    fusion_bilinear_mfb         mm 4, k 2, relu in / relu out, no normalisation (MMF defaults)
    fusion_bilinear_mfb_norm    mm 4, k 3, tanh in / no out activation, normalised
    fusion_bilinear_mutan       mm 4, rank 3, no input activation, no normalisation
    fusion_bilinear_mutan_norm  mm 3, rank 2, tanh input activation, normalised
"""
import pathlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_layer_fixtures import main, make_case  # noqa: E402  (one fixture layout)

B, D0, D1, OUT = 4, 5, 3, 3
# Sample 1 lacks modality 1, sample 2 lacks modality 0.
PRESENCE = torch.tensor([[True, True], [True, False], [False, True], [True, True]])


def act(name):
    return {None: lambda t: t, "relu": F.relu, "tanh": torch.tanh}[name]


# min |z| over the samples with both modalities present, of the last float64 forward.
MIN_ABS_Z = [float("inf")]


def power_l2(z, presence):
    if z.dtype == torch.float64:
        both = presence.all(dim=1)
        MIN_ABS_Z[0] = float(z.detach()[both].abs().min())
    return F.normalize(torch.sqrt(F.relu(z)) - torch.sqrt(F.relu(-z)), p=2, dim=1)


def masked(f, keep):
    return f * keep.to(f.dtype).unsqueeze(1)


class MFB(nn.Module):
    """Twin of mmfuse::fusion::mfb (MMF MFB without dropout, plus the presence mask)."""

    def __init__(self, mm, k, activ_input, activ_output, normalize):
        super().__init__()
        self.linear0 = nn.Linear(D0, mm * k)
        self.linear1 = nn.Linear(D1, mm * k)
        self.linear_out = nn.Linear(mm, OUT)
        self.mm, self.k, self.normalize = mm, k, normalize
        self.ai, self.ao = act(activ_input), act(activ_output)

    def forward(self, x0, x1, presence):
        f0 = masked(self.ai(self.linear0(x0)), presence[:, 0])
        f1 = masked(self.ai(self.linear1(x1)), presence[:, 1])
        z = (f0 * f1).view(-1, self.mm, self.k).sum(2)  # factor index fast
        if self.normalize:
            z = power_l2(z, presence)
        return self.ao(self.linear_out(z))


class Mutan(nn.Module):
    """Twin of mmfuse::fusion::mutan (MMF Mutan without dropout / shared, plus an optional
    input activation and the presence mask)."""

    def __init__(self, mm, rank, activ_input, normalize):
        super().__init__()
        self.linear0 = nn.Linear(D0, mm)
        self.merge_linear0 = nn.Linear(mm, mm * rank)
        self.linear1 = nn.Linear(D1, mm)
        self.merge_linear1 = nn.Linear(mm, mm * rank)
        self.linear_out = nn.Linear(mm, OUT)
        self.mm, self.rank, self.normalize = mm, rank, normalize
        self.ai = act(activ_input)

    def forward(self, x0, x1, presence):
        f0 = masked(self.merge_linear0(self.ai(self.linear0(x0))), presence[:, 0])
        f1 = masked(self.merge_linear1(self.ai(self.linear1(x1))), presence[:, 1])
        z = (f0 * f1).view(-1, self.rank, self.mm).sum(1)  # rank index slow
        if self.normalize:
            z = power_l2(z, presence)
        return self.linear_out(z)


def case(module):
    def make(g):
        inputs = {"x0": torch.randn(B, D0, generator=g, dtype=torch.float64),
                  "x1": torch.randn(B, D1, generator=g, dtype=torch.float64)}
        return module, inputs, {"presence": PRESENCE.clone()}, \
            lambda m, i, k: m(i["x0"], i["x1"], k["presence"])
    return make


CASES = {
    "fusion_bilinear_mfb": case(MFB(4, 2, "relu", "relu", False)),
    "fusion_bilinear_mfb_norm": case(MFB(4, 3, "tanh", None, True)),
    "fusion_bilinear_mutan": case(Mutan(4, 3, None, False)),
    "fusion_bilinear_mutan_norm": case(Mutan(3, 2, "tanh", True)),
}


def make_away_from_zero(out, name, factory, seed):
    """Normalised cases: redraw until every present z is at least 0.05 from 0, where the
    signed sqrt's slope 1 / (2 sqrt|z|) would amplify float32 round-off."""
    for attempt in range(100):
        MIN_ABS_Z[0] = float("inf")
        make_case(out, name, factory, seed + 1000 * attempt)
        if MIN_ABS_Z[0] >= 0.05:
            return
    raise RuntimeError(f"{name}: no draw keeps z away from 0")



if __name__ == "__main__":
    main(CASES, 20240900, __doc__.split("\n")[0], make=make_away_from_zero)
