#!/usr/bin/env python3
"""Golden fixtures for mmfuse's diffusion schedules and samplers (tests/diffusion, tag [golden]).

    pip install diffusers k-diffusion scipy safetensors
    python3 tools/golden/make_diffusion_fixtures.py [--out tests/data/golden/diffusion]

Made with diffusers 0.42.1, k-diffusion 0.1.1.post1, torch 2.15 (CPU), numpy 1.26, scipy 1.17
(the versions are also written into every file's metadata). k-diffusion's package __init__
imports optional modules (clip, ...) that need pkg_resources; only `k_diffusion.sampling` is
loaded here (its package __init__ is bypassed), unmodified. NVlabs/edm is not a pip package:
its `edm_sampler` (generate.py) is re-written below from its equations, in float64.

FORMAT
======
Every file is a safetensors file (github.com/huggingface/safetensors): tensors are F64 (all
values; integers and float32 values are stored exactly), names use '/' as separator, and the
`__metadata__` string map carries every parameter under "<name>.<key>" keys (no JSON parser
needed). Every file's metadata has "generator", "versions" and "cases" (comma-separated list
of the case / table names it holds).

schedule.safetensors -- training tables, timestep grids, sigma schedules, thresholding, SNR
----------------------------------------------------------------------------------------------
Tables. For <table> in the "cases" list (linear, linear_zsnr, scaled_linear, scaled_linear_zsnr,
squaredcos_cap_v2, squaredcos_cap_v2_zsnr), metadata "<table>.beta_schedule", ".beta_start",
".beta_end", ".rescale_zero_terminal_snr" (0/1), ".num_train_timesteps", and tensors
  table/<table>/betas, table/<table>/alphas_cumprod   (T,) diffusers DDPMScheduler (float32
                 torch tensors, stored exactly); zero-SNR keeps alphas_cumprod[T-1] = 0
  table/<table>/betas64, table/<table>/alphas_cumprod64   (T,) float64 re-derivation: the
                 same diffusers code run with every float32 dtype replaced by float64
  table/<table>/sigmas   (T,) diffusers EulerDiscreteScheduler's float32 sigma table
                 sqrt((1-ac)/ac) (zero-SNR: Euler's ac[T-1] = 2^-24 override, sigma ~ 4096)
  interp/<table>/t, interp/<table>/sigma_at_t   fractional t and np.interp of the float32
                 sigma table there, rounded to float32 (Euler's rule)
  interp/<table>/sigma, interp/<table>/t_of_sigma   sigmas and EulerDiscreteScheduler.
                 _sigma_to_t(sigma, log(float32 sigma table)) (zero-SNR tables: 2^-24 override)
Timesteps. timesteps/<grid>/<spacing>/<steps>/<offset> (steps,) for grid in
  n        DDIMScheduler (N-grid, integer),
  n_float  EulerDiscreteScheduler (N-grid, linspace not rounded: float32 values),
  n_plus_one  DPMSolverMultistepScheduler (N+1 grid, last point dropped),
spacing in {leading, trailing, linspace}, steps in {10, 25, 50}, offset in {0, 1} (linear table).
Sigma schedules (float64; k-diffusion with torch's default dtype set to float64):
  sigmas/karras/<n>, sigmas/exponential/<n>, sigmas/polyexponential/<n>  (n+1,) k-diffusion
      get_sigmas_* (appended 0 included) with sigma_min 0.0292, sigma_max 14.6146,
      polyexponential rho 2 (metadata "sigmas.sigma_min", ".sigma_max", ".poly_rho")
  sigmas/karras_diffusers/<table>/<n>   (n,) EulerDiscreteScheduler._convert_to_karras on the
      table's linspace sigmas (no final sigma); metadata "sigmas/karras_diffusers/<table>/<n>.
      sigma_min" and ".sigma_max" give the exact ends used
  sigmas/edm/<n>   (n+1,) NVlabs edm_sampler t_steps, defaults (0.002, 80, rho 7), final 0
  n in {10, 25, 50} (edm also 18).
Thresholding. threshold/input (2, 4, 2, 2) and threshold/output: DDPMScheduler._threshold_sample
  (float64 input, so float64 arithmetic), metadata "threshold.ratio", ".sample_max_value".
SNR / training. snr/<table>/t (k,), snr/<table>/snr (k,) diffusers.training_utils.compute_snr
  (float32); add_noise/x0, add_noise/noise (4, 3), add_noise/t (4,), add_noise/noisy,
  add_noise/velocity: DDPMScheduler.add_noise / get_velocity on the scaled_linear table in
  float32 (inputs stored exactly as float32 values).

samplers_<family>.safetensors -- one sampler chain per case
-------------------------------------------------------------
<family>: ddpm, ddim, pndm, dpmsolver, euler, euler_ancestral, heun, lms, unipc (diffusers),
kdiffusion, edm, cfg. Metadata per case <c>:
  <c>.sampler       diffusers class name, "k_diffusion.<function>", or "edm_sampler"
  <c>.<kwarg>       every constructor argument given to the scheduler (beta_schedule,
                    beta_start, beta_end, prediction_type, timestep_spacing, steps_offset,
                    rescale_betas_zero_snr, clip_sample, solver_order, ...) as str(value);
                    class defaults apply to everything not listed
  <c>.step.<kwarg>  arguments of step() (eta for DDIM, s_churn, ...) / of the k-diffusion
                    or edm sampler function
  <c>.steps         num_inference_steps (k-diffusion / edm: number of sigmas before the 0)
  <c>.n_calls       model calls (= step() calls)
  <c>.s             the denoiser's data std s (see DENOISER)
  <c>.guidance_scale, <c>.guidance_rescale   (cfg family only)
  <c>.max_rel_gap_f32_vs_f64   informational: max |x - x64| / max(1, |x64|) over the chain
  <c>.ode_endpoint_error       informational: max |x_final - (mu + s z*)|, the analytic ODE end
Tensors per case (shape S of the latent, (2, 3) unless a case says otherwise):
  <c>/latent        S   the N(0, I) latent z (float32-exact values)
  <c>/mu            S   the data mean mu of the conditional denoiser
  <c>/mu_uncond     S   (cfg only) the data mean of the unconditional denoiser
  <c>/x             (n_calls+1, *S)  the chain: x[0] = latent * init_noise_sigma, x[k+1] the
                    sample returned by step() call k (for k-diffusion / edm: the state before
                    every step, then the final output). diffusers: the library's float32 run.
  <c>/x64           (n_calls+1, *S)  (diffusers only) the float64 re-run: the same library code
                    with torch.float32 / np.float32 mapped to float64 inside the scheduler (and
                    CFG) modules and torch's default dtype float64, on the same noise
  <c>/noise         (n_noise, *S)  every standard-normal tensor the sampler drew, in order
                    (float32-exact values; the float64 re-run replays exactly these)
  <c>/model_t       (n_calls,)  the timestep given to the model at each call (float32 run);
                    <c>/model_t64 the float64 run's, when it differs (fractional linspace)
  <c>/sigmas, <c>/sigmas64   the scheduler's sigma array after set_timesteps (sigma-space
                    samplers; k-diffusion / edm: the sigma schedule used, final 0 included)

DENOISER (reference section 10): data x0 ~ N(mu, s^2 I), so the exact posterior means are
closed-form. VP samplers call model(x, t) with x in VP form; the model takes its level as
  ac(t) = 1 / (1 + sigma64(t)^2),  sigma64(t) = np.interp(t, arange(T), sqrt((1-ac64)/ac64))
where ac64 is the float64 table of the case's schedule (with the 2^-24 zero-SNR override for the
classes that apply it), and returns, with D = ac s^2 + 1 - ac and r = x - sqrt(ac) mu,
  eps = sqrt(1-ac) r / D,  x0 = mu + sqrt(ac) s^2 r / D,  v = sqrt(ac) eps - sqrt(1-ac) x0
(the one matching prediction_type). Euler / Euler-a / Heun / LMS give the model
scale_model_input(x) = x / sqrt(sigma^2 + 1) and their (possibly fractional) timestep, so the
same rule applies. k-diffusion and edm use the VE denoiser D(x, sigma) = mu + s^2 (x - mu) /
(s^2 + sigma^2) directly. The float32 run evaluates the denoiser in float64 on the float32
input and rounds its output to float32. The analytic probability-flow ODE endpoint from
x[0] at level sigma_0 is mu + s (x[0] - sqrt(ac_0) mu)/sqrt(D_0) in VP form (VE: mu + s
(x[0] - mu)/sqrt(s^2 + sigma_0^2)).

CFG (family cfg): the SD pipeline's loop: out_u = model with mu_uncond, out_c = model with mu,
out = out_u + g (out_c - out_u), then guidance rescale when phi > 0: diffusers'
rescale_noise_cfg(out, out_c, phi), restated in this script (its module imports transformers):
per-sample unbiased std over all non-batch axes, out <- phi out std(out_c)/std(out) + (1-phi) out.

Cases not produced (the library refuses them): PNDM and Euler-ancestral with prediction
"sample"; epsilon prediction with zero-terminal-SNR on DDPM/DDIM (x0 undefined at ac = 0).
UniPC bh1 with final_sigmas_type "zero" returns NaN on its last step (B(h) = -inf times a zero
residual), so its cases use final_sigmas_type "sigma_min" (recorded in the metadata).
"""
import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import pathlib
import sys
import types

import numpy as np
import torch

import diffusers
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                       HeunDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UniPCMultistepScheduler)
from diffusers.training_utils import compute_snr
from safetensors.numpy import save_file


def load_k_sampling():
    """k_diffusion.sampling without the package __init__ (which imports clip & co)."""
    spec = importlib.util.find_spec("k_diffusion")
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault("k_diffusion", pkg)
    return importlib.import_module("k_diffusion.sampling")


ks = load_k_sampling()

T = 1000
SHAPE = (2, 3)
S_DATA = 0.5
TABLES = {
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    "scaled_linear": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    "squaredcos_cap_v2": dict(beta_schedule="squaredcos_cap_v2", beta_start=1e-4, beta_end=0.02),
}
PREDS = ["epsilon", "v_prediction", "sample"]
STEPS = [10, 25, 50]


def versions():
    import scipy
    return (f"diffusers {diffusers.__version__}; k-diffusion 0.1.1.post1; torch {torch.__version__}; "
            f"numpy {np.__version__}; scipy {scipy.__version__}")


def f64(a):
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().to(torch.float64).numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# float64 re-runs of diffusers: inside the scheduler modules, torch.float32 / np.float32 mean
# float64.

class _Promote:
    def __init__(self, mod, to):
        self._mod, self._to = mod, to

    def __getattr__(self, name):
        if name == "float32":
            return self._to
        return getattr(self._mod, name)


SCHED_MODULES = [importlib.import_module(f"diffusers.schedulers.{m}") for m in (
    "scheduling_ddpm", "scheduling_ddim", "scheduling_pndm", "scheduling_dpmsolver_multistep",
    "scheduling_euler_discrete", "scheduling_euler_ancestral_discrete", "scheduling_heun_discrete",
    "scheduling_lms_discrete", "scheduling_unipc_multistep")]


def rescale_noise_cfg(out, out_c, phi):
    """Guidance rescale (Lin et al. 2023, sec. 3.4), with the semantics of diffusers'
    pipeline_stable_diffusion.rescale_noise_cfg (whose module needs `transformers`, so it is
    restated here): per-sample unbiased std over all non-batch axes, out_r = out std(out_c) /
    std(out), result phi out_r + (1 - phi) out. Runs in the tensors' dtype."""
    dims = list(range(1, out.ndim))
    out_r = out * (out_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True))
    return phi * out_r + (1 - phi) * out


@contextlib.contextmanager
def precision(double):
    if not double:
        yield
        return
    saved = [(m, m.torch, m.np) for m in SCHED_MODULES]
    old_default = torch.get_default_dtype()
    try:
        for m in SCHED_MODULES:
            m.torch = _Promote(torch, torch.float64)
            m.np = _Promote(np, np.float64)
        torch.set_default_dtype(torch.float64)
        yield
    finally:
        for m, t, n in saved:
            m.torch, m.np = t, n
        torch.set_default_dtype(old_default)


# ---------------------------------------------------------------------------------------------
# Noise: every draw recorded (float32-exact values), replayed in the float64 run.

class NoiseTape:
    def __init__(self, seed, replay=None):
        self.rng = np.random.default_rng(seed)
        self.draws = [] if replay is None else None
        self.replay = None if replay is None else list(replay)

    def next(self, shape):
        if self.replay is not None:
            a = self.replay.pop(0)
            assert a.shape == tuple(shape), (a.shape, shape)
            return a
        a = self.rng.standard_normal(tuple(shape)).astype(np.float32).astype(np.float64)
        self.draws.append(a)
        return a


@contextlib.contextmanager
def patched_noise(tape):
    def fake_randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        return torch.tensor(tape.next(tuple(shape)), dtype=dtype or torch.float32)

    def fake_randn_like(x, *args, **kwargs):
        return torch.tensor(tape.next(tuple(x.shape)), dtype=kwargs.get("dtype") or x.dtype)

    saved = [(m, m.__dict__.get("randn_tensor")) for m in SCHED_MODULES]
    old_like = torch.randn_like
    try:
        for m, _ in saved:
            if "randn_tensor" in m.__dict__:
                m.randn_tensor = fake_randn_tensor
        torch.randn_like = fake_randn_like
        yield
    finally:
        for m, f in saved:
            if f is not None:
                m.randn_tensor = f
        torch.randn_like = old_like


# ---------------------------------------------------------------------------------------------
# Independent float64 tables (numpy, from the equations; compared against the re-runs).

def tables64(beta_schedule, beta_start, beta_end, zsnr=False, terminal=0.0):
    if beta_schedule == "linear":
        b = np.linspace(beta_start, beta_end, T)
    elif beta_schedule == "scaled_linear":
        b = np.linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2
    else:
        f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        b = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    if zsnr:
        s = np.sqrt(np.cumprod(1 - b))
        s0, sT = s[0], s[-1]
        abar = ((s - sT) * s0 / (s0 - sT)) ** 2
        b = 1 - np.concatenate([abar[:1], abar[1:] / abar[:-1]])
    ac = np.cumprod(1 - b)
    if zsnr:
        ac[-1] = terminal
    return b, ac


class Denoiser:
    """The closed-form Gaussian denoiser (module docstring, DENOISER)."""

    def __init__(self, ac64, mu, s, prediction):
        with np.errstate(divide="ignore"):
            self.sig = np.sqrt((1 - ac64) / ac64)
        self.mu, self.s, self.pred = mu, s, prediction

    def ac_at(self, t):
        sig = float(np.interp(float(t), np.arange(T), self.sig))
        return 1.0 / (1.0 + sig * sig)

    def __call__(self, x, t):
        dtype = x.dtype
        x = x.detach().to(torch.float64).numpy()
        ac = self.ac_at(t)
        a, sd = math.sqrt(ac), math.sqrt(1 - ac)
        D = ac * self.s ** 2 + 1 - ac
        r = x - a * self.mu
        eps = sd * r / D
        x0 = self.mu + a * self.s ** 2 * r / D
        out = {"epsilon": eps, "sample": x0, "v_prediction": a * eps - sd * x0}[self.pred]
        return torch.tensor(out, dtype=dtype)

    def ode_endpoint_vp(self, x_start, ac0):
        D = ac0 * self.s ** 2 + 1 - ac0
        return self.mu + self.s * (x_start - math.sqrt(ac0) * self.mu) / math.sqrt(D)


def ve_denoiser(mu, s):
    def D(x, sigma):
        sg = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(torch.float64)
        return torch.as_tensor(mu) + s ** 2 * (x - torch.as_tensor(mu)) / (s ** 2 + sg ** 2)
    return D


# ---------------------------------------------------------------------------------------------
# Writers.

class Bundle:
    def __init__(self):
        self.tensors, self.meta, self.cases = {}, {}, []

    def put(self, name, a):
        assert name not in self.tensors, name
        self.tensors[name] = f64(a)

    def info(self, name, **kv):
        for k, v in kv.items():
            self.meta[f"{name}.{k}"] = v if isinstance(v, str) else repr(v) if isinstance(v, float) else str(v)

    def save(self, path):
        meta = dict(self.meta)
        meta["generator"] = "tools/golden/make_diffusion_fixtures.py"
        meta["versions"] = versions()
        meta["cases"] = ",".join(self.cases)
        save_file(self.tensors, str(path), metadata=meta)
        return path.stat().st_size


def table_name(kind, zsnr):
    return kind + ("_zsnr" if zsnr else "")


def make_schedule(out):
    b = Bundle()
    for kind, cfg in TABLES.items():
        for zsnr in (False, True):
            name = table_name(kind, zsnr)
            b.cases.append(name)
            b.info(name, num_train_timesteps=T, rescale_zero_terminal_snr=int(zsnr),
                   beta_schedule=cfg["beta_schedule"], beta_start=cfg["beta_start"],
                   beta_end=cfg["beta_end"])
            kw = dict(cfg, rescale_betas_zero_snr=zsnr)
            s32 = DDPMScheduler(**kw)
            with precision(True):
                s64 = DDPMScheduler(**kw)
            assert s64.alphas_cumprod.dtype == torch.float64
            b.put(f"table/{name}/betas", s32.betas)
            b.put(f"table/{name}/alphas_cumprod", s32.alphas_cumprod)
            b.put(f"table/{name}/betas64", s64.betas)
            b.put(f"table/{name}/alphas_cumprod64", s64.alphas_cumprod)
            ib, iac = tables64(cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], zsnr)
            gap = np.max(np.abs(iac - f64(s64.alphas_cumprod)) / np.maximum(iac, 1e-300))
            assert gap < 1e-12, (name, gap)
            e = EulerDiscreteScheduler(**kw)
            sig = np.array(((1 - e.alphas_cumprod) / e.alphas_cumprod) ** 0.5)
            b.put(f"table/{name}/sigmas", sig)
            ts = np.array([0.0, 0.25, 1.5, 10.0, 17.3, 123.456, 500.5, 957.375, 998.9, 999.0])
            b.put(f"interp/{name}/t", ts)
            b.put(f"interp/{name}/sigma_at_t",
                  np.interp(ts, np.arange(T), sig).astype(np.float32))
            log_sigmas = np.log(sig)
            q = np.array([1e-3, sig[0], 0.05, 0.3, 1.0, 2.5, 14.6146, 80.0, float(sig[-1]), 1e5])
            b.put(f"interp/{name}/sigma", q)
            b.put(f"interp/{name}/t_of_sigma", np.array([e._sigma_to_t(v, log_sigmas) for v in q]))

    # Timestep grids.
    for steps in STEPS:
        for spacing in ("leading", "trailing", "linspace"):
            for offset in (0, 1):
                for grid, cls in (("n", DDIMScheduler), ("n_float", EulerDiscreteScheduler),
                                  ("n_plus_one", DPMSolverMultistepScheduler)):
                    sch = cls(timestep_spacing=spacing, steps_offset=offset)
                    sch.set_timesteps(steps)
                    b.put(f"timesteps/{grid}/{spacing}/{steps}/{offset}", sch.timesteps)

    # Sigma schedules.
    smin, smax = 0.0292, 14.6146
    b.info("sigmas", sigma_min=smin, sigma_max=smax, poly_rho=2.0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for n in STEPS:
            b.put(f"sigmas/karras/{n}", ks.get_sigmas_karras(n, smin, smax))
            b.put(f"sigmas/exponential/{n}", ks.get_sigmas_exponential(n, smin, smax))
            b.put(f"sigmas/polyexponential/{n}", ks.get_sigmas_polyexponential(n, smin, smax, rho=2.0))
        for n in STEPS + [18]:
            b.put(f"sigmas/edm/{n}", edm_t_steps(n))
    finally:
        torch.set_default_dtype(old)
    for kind in TABLES:
        e = EulerDiscreteScheduler(**TABLES[kind], use_karras_sigmas=True)
        for n in STEPS:
            e.set_timesteps(n)
            # Euler takes sigma_min / sigma_max from the interpolated linspace sigmas.
            lin = EulerDiscreteScheduler(**TABLES[kind])
            lin.set_timesteps(n)
            in_sig = f64(lin.sigmas[:-1]).astype(np.float32)
            ks_ = e._convert_to_karras(in_sigmas=torch.tensor(in_sig), num_inference_steps=n)
            name = f"sigmas/karras_diffusers/{kind}/{n}"
            b.put(name, np.asarray(ks_))
            b.info(name, sigma_min=float(in_sig[-1]), sigma_max=float(in_sig[0]))
            assert np.allclose(np.asarray(ks_, dtype=np.float64), f64(e.sigmas[:-1]), rtol=1e-6)

    # Thresholding.
    g = np.random.default_rng(7)
    x = g.standard_normal((2, 4, 2, 2)) * np.array([1.8, 0.6]).reshape(2, 1, 1, 1)
    th = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    b.put("threshold/input", x)
    b.put("threshold/output", th._threshold_sample(torch.tensor(x)))
    b.info("threshold", ratio=0.9, sample_max_value=1.5)

    # SNR and add_noise / velocity.
    tq = torch.tensor([0, 1, 10, 100, 500, 998, 999])
    for kind in TABLES:
        for zsnr in (False, True):
            name = table_name(kind, zsnr)
            sch = DDPMScheduler(**TABLES[kind], rescale_betas_zero_snr=zsnr)
            b.put(f"snr/{name}/t", tq)
            b.put(f"snr/{name}/snr", compute_snr(sch, tq))
    sch = DDPMScheduler(**TABLES["scaled_linear"])
    x0 = torch.tensor(g.standard_normal((4, 3)), dtype=torch.float32)
    nz = torch.tensor(g.standard_normal((4, 3)), dtype=torch.float32)
    tt = torch.tensor([0, 250, 731, 999])
    b.put("add_noise/x0", x0)
    b.put("add_noise/noise", nz)
    b.put("add_noise/t", tt)
    b.put("add_noise/noisy", sch.add_noise(x0, nz, tt))
    b.put("add_noise/velocity", sch.get_velocity(x0, nz, tt))
    b.info("add_noise", table="scaled_linear")
    return b.save(out / "schedule.safetensors")


def edm_t_steps(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    """NVlabs/edm generate.py edm_sampler's time steps (float64), final 0 appended."""
    i = torch.arange(n, dtype=torch.float64)
    t = (sigma_max ** (1 / rho) + i / (n - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


# ---------------------------------------------------------------------------------------------
# diffusers sampler chains.

TERMINAL_OVERRIDE = {EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
                     DPMSolverMultistepScheduler, UniPCMultistepScheduler}


def run_chain(cls, kw, step_kw, steps, latent, den_c, den_u, guidance, rescale, double, tape):
    with precision(double), patched_noise(tape):
        sch = cls(**kw)
        sch.set_timesteps(steps)
        dt = torch.float64 if double else torch.float32
        x = torch.tensor(latent, dtype=dt) * sch.init_noise_sigma
        states, model_t = [f64(x)], []
        for t in sch.timesteps:
            xin = sch.scale_model_input(x, t)
            tv = float(t)
            model_t.append(tv)
            out = den_c(xin, tv)
            if den_u is not None:
                out_u = den_u(xin, tv)
                out_c = out
                out = out_u + guidance * (out_c - out_u)
                if rescale > 0:
                    out = rescale_noise_cfg(out, out_c, rescale)
            x = sch.step(out, t, x, **step_kw).prev_sample
            states.append(f64(x))
        sig = f64(sch.sigmas) if hasattr(sch, "sigmas") and isinstance(sch.sigmas, torch.Tensor) else None
        return np.stack(states), np.array(model_t), sig


def add_diffusers_case(b, name, cls, kw, step_kw, steps, seed, shape=SHAPE, guidance=None,
                       rescale=0.0):
    g = np.random.default_rng(seed)
    latent = g.standard_normal(shape).astype(np.float32).astype(np.float64)
    mu = (0.8 * g.standard_normal(shape)).astype(np.float64)
    mu_u = (0.8 * g.standard_normal(shape)).astype(np.float64) if guidance else None
    cfg = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    cfg.update(kw)
    zsnr = cfg.get("rescale_betas_zero_snr", False)
    terminal = 2.0 ** -24 if (zsnr and cls in TERMINAL_OVERRIDE) else 0.0
    _, ac64 = tables64(cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], zsnr, terminal)
    pred = cfg.get("prediction_type", "epsilon")
    den_c = Denoiser(ac64, mu, S_DATA, pred)
    den_u = Denoiser(ac64, mu_u, S_DATA, pred) if guidance else None
    tape = NoiseTape(seed + 1)
    x32, mt32, sig32 = run_chain(cls, cfg, step_kw, steps, latent, den_c, den_u, guidance, rescale,
                                 False, tape)
    replay = NoiseTape(0, replay=tape.draws)
    x64, mt64, sig64 = run_chain(cls, cfg, step_kw, steps, latent, den_c, den_u, guidance, rescale,
                                 True, replay)
    assert not replay.replay, "float64 run drew less noise"
    assert np.all(np.isfinite(x32)) and np.all(np.isfinite(x64)), name
    b.cases.append(name)
    b.info(name, sampler=cls.__name__, steps=steps, n_calls=len(mt32), s=S_DATA)
    for k, v in cfg.items():
        b.info(name, **{k: v})
    for k, v in step_kw.items():
        b.info(name, **{f"step.{k}": v})
    if guidance:
        b.info(name, guidance_scale=float(guidance), guidance_rescale=float(rescale))
    b.put(f"{name}/latent", latent)
    b.put(f"{name}/mu", mu)
    if guidance:
        b.put(f"{name}/mu_uncond", mu_u)
    b.put(f"{name}/x", x32)
    b.put(f"{name}/x64", x64)
    if tape.draws:
        b.put(f"{name}/noise", np.stack(tape.draws))
    b.put(f"{name}/model_t", mt32)
    if not np.array_equal(mt32, mt64):
        b.put(f"{name}/model_t64", mt64)
    if sig32 is not None:
        b.put(f"{name}/sigmas", sig32)
        b.put(f"{name}/sigmas64", sig64)
    gap = float(np.max(np.abs(x32 - x64) / np.maximum(1.0, np.abs(x64))))
    b.info(name, max_rel_gap_f32_vs_f64=gap)
    if not guidance and not tape.draws:
        # Analytic PF-ODE endpoint from the start state (VP level of the first model call).
        ac0 = den_c.ac_at(mt64[0])
        x_vp0 = x64[0] / math.sqrt(1.0 + (1 - ac0) / ac0) if sig32 is not None else x64[0]
        end = den_c.ode_endpoint_vp(x_vp0, ac0)
        b.info(name, ode_endpoint_error=float(np.max(np.abs(x64[-1] - end))))
    return gap


SAMPLERS = {
    "ddpm": [("ddpm", DDPMScheduler, dict(clip_sample=False), {})],
    "ddim": [("ddim_eta0", DDIMScheduler, dict(clip_sample=False), dict(eta=0.0)),
             ("ddim_eta1", DDIMScheduler, dict(clip_sample=False), dict(eta=1.0))],
    "pndm": [("pndm", PNDMScheduler, {}, {})],
    "dpmsolver": [(f"dpmpp_o{o}" + (f"_{st}" if o > 1 else ""), DPMSolverMultistepScheduler,
                   dict(solver_order=o, solver_type=st, algorithm_type="dpmsolver++",
                        lower_order_final=True), {})
                  for o in (1, 2, 3) for st in (("midpoint", "heun") if o > 1 else ("midpoint",))],
    "euler": [("euler", EulerDiscreteScheduler, {}, {})],
    "euler_ancestral": [("euler_a", EulerAncestralDiscreteScheduler, {}, {})],
    "heun": [("heun", HeunDiscreteScheduler, {}, {})],
    "lms": [("lms", LMSDiscreteScheduler, {}, {})],
    "unipc": [("unipc_bh2", UniPCMultistepScheduler, dict(solver_type="bh2"), {}),
              ("unipc_bh1", UniPCMultistepScheduler, dict(solver_type="bh1",
                                                          final_sigmas_type="sigma_min"), {})],
}
NO_SAMPLE = {PNDMScheduler, EulerAncestralDiscreteScheduler}

# Extra cases per family: (suffix, extra constructor kwargs, step kwargs, steps, shape).
EXTRAS = {
    "ddpm": [("clip", dict(clip_sample=True), {}, 25, SHAPE),
             ("threshold", dict(thresholding=True, dynamic_thresholding_ratio=0.9,
                                sample_max_value=1.2), {}, 25, (2, 4, 2, 2)),
             ("sd_leading", dict(steps_offset=1), {}, 25, SHAPE)],
    "ddim": [("sd_leading", dict(steps_offset=1, set_alpha_to_one=False), dict(eta=0.0), 25, SHAPE),
             ("trailing_zsnr_v", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                      prediction_type="v_prediction"), dict(eta=0.0), 25, SHAPE),
             ("linspace", dict(timestep_spacing="linspace"), dict(eta=0.0), 10, SHAPE),
             ("threshold", dict(thresholding=True, dynamic_thresholding_ratio=0.9,
                                sample_max_value=1.2), dict(eta=0.0), 25, (2, 4, 2, 2)),
             ("clipped_eps", dict(clip_sample=True), dict(eta=0.5, use_clipped_model_output=True),
              25, SHAPE)],
    "pndm": [("plms", dict(skip_prk_steps=True, steps_offset=1), {}, 25, SHAPE)],
    "dpmsolver": [("karras", dict(use_karras_sigmas=True), {}, 25, SHAPE),
                  ("trailing_zsnr_v", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                           prediction_type="v_prediction"), {}, 25, SHAPE),
                  ("o3_20steps", dict(solver_order=3), {}, 20, SHAPE)],
    "euler": [("karras", dict(use_karras_sigmas=True), {}, 25, SHAPE),
              ("leading", dict(timestep_spacing="leading", steps_offset=1), {}, 25, SHAPE),
              ("trailing_zsnr_v", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                       prediction_type="v_prediction"), {}, 25, SHAPE),
              ("churn", {}, dict(s_churn=2.0, s_tmin=0.1, s_tmax=10.0), 25, SHAPE)],
    "euler_ancestral": [("trailing_zsnr_v", dict(timestep_spacing="trailing", rescale_betas_zero_snr=True,
                                                 prediction_type="v_prediction"), {}, 25, SHAPE)],
    "heun": [("karras", dict(use_karras_sigmas=True), {}, 25, SHAPE)],
    "lms": [("karras", dict(use_karras_sigmas=True), {}, 25, SHAPE)],
    "unipc": [("karras", dict(use_karras_sigmas=True), {}, 25, SHAPE),
              ("o3", dict(solver_order=3), {}, 25, SHAPE)],
}


def make_diffusers_family(out, family, report):
    b = Bundle()
    seed = 1000
    for tag, cls, kw, step_kw in SAMPLERS[family]:
        for kind in TABLES:
            for pred in PREDS:
                if pred == "sample" and cls in NO_SAMPLE:
                    continue
                for steps in STEPS:
                    seed += 10
                    name = f"{tag}/{kind}/{pred}/{steps}"
                    k = dict(TABLES[kind], prediction_type=pred, **kw)
                    report.append((name, add_diffusers_case(b, name, cls, k, step_kw, steps, seed)))
        for suffix, kw2, skw2, steps, shape in EXTRAS.get(family, []):
            seed += 10
            k = dict(TABLES["scaled_linear"], **kw)
            k.update(kw2)
            skw = dict(step_kw)
            skw.update(skw2)
            name = f"{tag}/extra_{suffix}"
            report.append((name, add_diffusers_case(b, name, cls, k, skw, steps, seed, shape)))
    return b.save(out / f"samplers_{family}.safetensors")


def make_cfg(out, report):
    b = Bundle()
    seed = 90000
    for tag, cls, kw, skw in [("ddim", DDIMScheduler, dict(clip_sample=False), dict(eta=0.0)),
                              ("euler", EulerDiscreteScheduler, {}, {}),
                              ("dpmpp_2m", DPMSolverMultistepScheduler, {}, {}),
                              ("unipc", UniPCMultistepScheduler, {}, {})]:
        for pred in ("epsilon", "v_prediction"):
            for rescale in (0.0, 0.7):
                seed += 10
                name = f"{tag}/{pred}/rescale{rescale}"
                k = dict(TABLES["scaled_linear"], prediction_type=pred, **kw)
                report.append((name, add_diffusers_case(b, name, cls, k, skw, 25, seed,
                                                        guidance=7.5, rescale=rescale)))
        seed += 10
        name = f"{tag}/trailing_zsnr_v/rescale0.7"
        k = dict(TABLES["scaled_linear"], prediction_type="v_prediction", timestep_spacing="trailing",
                 rescale_betas_zero_snr=True, **kw)
        report.append((name, add_diffusers_case(b, name, cls, k, skw, 25, seed, guidance=7.5,
                                                rescale=0.7)))
    return b.save(out / "samplers_cfg.safetensors")


# ---------------------------------------------------------------------------------------------
# k-diffusion (float64) and the EDM sampler.

K_SAMPLERS = ["sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpm_2",
              "sample_dpmpp_2m", "sample_dpmpp_2s_ancestral", "sample_lms"]


def run_k(fn, sigmas, latent, mu, tape, **kw):
    states = []
    model = ve_denoiser(mu, S_DATA)
    calls = [0]

    def counted(x, sigma):
        calls[0] += 1
        return model(x, sigma)

    x = torch.tensor(latent, dtype=torch.float64) * sigmas[0]
    with patched_noise(tape):
        out = fn(counted, x, sigmas, callback=lambda d: states.append(f64(d["x"])), disable=True, **kw)
    states.append(f64(out))
    return np.stack(states), calls[0]


def edm_sampler(latents, t_steps, tape, mu, S_churn=0.0, S_min=0.0, S_max=float("inf"),
                S_noise=1.0):
    """NVlabs/edm generate.py edm_sampler (Karras et al. 2022, Alg. 2), float64, with the VE
    closed-form denoiser; randn_like is drawn at every step (as there), even when gamma = 0."""
    net = ve_denoiser(mu, S_DATA)
    num_steps = len(t_steps) - 1
    x_next = torch.tensor(latents, dtype=torch.float64) * t_steps[0]
    states, calls = [f64(x_next)], 0
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0
        t_hat = torch.as_tensor(t_cur + gamma * t_cur)
        z = torch.tensor(tape.next(x_cur.shape), dtype=torch.float64)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * z
        denoised = net(x_hat, t_hat.reshape(1).expand(x_hat.shape[0]))
        calls += 1
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net(x_next, t_next.reshape(1).expand(x_next.shape[0]))
            calls += 1
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        states.append(f64(x_next))
    return np.stack(states), calls


def make_kdiffusion(out, report):
    b = Bundle()
    seed = 50000
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        smin, smax = 0.0292, 14.6146
        for fname in K_SAMPLERS:
            for sched in ("karras", "exponential"):
                for n in STEPS:
                    seed += 10
                    g = np.random.default_rng(seed)
                    latent = g.standard_normal(SHAPE).astype(np.float32).astype(np.float64)
                    mu = 0.8 * g.standard_normal(SHAPE)
                    sig = getattr(ks, f"get_sigmas_{sched}")(n, smin, smax)
                    tape = NoiseTape(seed + 1)
                    xs, calls = run_k(getattr(ks, fname), sig, latent, mu, tape)
                    name = f"{fname[len('sample_'):]}/{sched}/{n}"
                    b.cases.append(name)
                    b.info(name, sampler="k_diffusion." + fname, steps=n, n_calls=calls, s=S_DATA,
                           sigma_schedule=sched, sigma_min=smin, sigma_max=smax)
                    b.put(f"{name}/latent", latent)
                    b.put(f"{name}/mu", mu)
                    b.put(f"{name}/x", xs)
                    b.put(f"{name}/sigmas", sig)
                    if tape.draws:
                        b.put(f"{name}/noise", np.stack(tape.draws))
                    if not tape.draws:
                        end = mu + S_DATA * (xs[0] - mu) / math.sqrt(S_DATA ** 2 + float(sig[0]) ** 2)
                        err = float(np.max(np.abs(xs[-1] - end)))
                        b.info(name, ode_endpoint_error=err)
                    report.append((name, 0.0))
        # Euler with churn (k-diffusion draws randn_like on every step and uses it only when gamma > 0).
        for fname in ("sample_euler", "sample_heun", "sample_dpm_2"):
            seed += 10
            g = np.random.default_rng(seed)
            latent = g.standard_normal(SHAPE).astype(np.float32).astype(np.float64)
            mu = 0.8 * g.standard_normal(SHAPE)
            sig = ks.get_sigmas_karras(25, smin, smax)
            tape = NoiseTape(seed + 1)
            kw = dict(s_churn=2.0, s_tmin=0.1, s_tmax=10.0, s_noise=1.003)
            xs, calls = run_k(getattr(ks, fname), sig, latent, mu, tape, **kw)
            name = f"{fname[len('sample_'):]}/karras_churn/25"
            b.cases.append(name)
            b.info(name, sampler="k_diffusion." + fname, steps=25, n_calls=calls, s=S_DATA,
                   sigma_schedule="karras", sigma_min=smin, sigma_max=smax)
            for k, v in kw.items():
                b.info(name, **{f"step.{k}": v})
            b.put(f"{name}/latent", latent)
            b.put(f"{name}/mu", mu)
            b.put(f"{name}/x", xs)
            b.put(f"{name}/sigmas", sig)
            b.put(f"{name}/noise", np.stack(tape.draws))
            report.append((name, 0.0))
    finally:
        torch.set_default_dtype(old)
    size = b.save(out / "samplers_kdiffusion.safetensors")

    e = Bundle()
    for n in (10, 18, 25):
        for churn in (0.0, 40.0):
            seed += 10
            g = np.random.default_rng(seed)
            latent = g.standard_normal(SHAPE).astype(np.float32).astype(np.float64)
            mu = 0.8 * g.standard_normal(SHAPE)
            t_steps = edm_t_steps(n)
            tape = NoiseTape(seed + 1)
            kw = dict(S_churn=churn, S_min=0.05, S_max=50.0, S_noise=1.003) if churn else {}
            xs, calls = edm_sampler(latent, t_steps, tape, mu, **kw)
            name = f"edm/{n}/churn{int(churn)}"
            e.cases.append(name)
            e.info(name, sampler="edm_sampler", steps=n, n_calls=calls, s=S_DATA, sigma_min=0.002,
                   sigma_max=80.0, rho=7.0)
            for k, v in (kw or dict(S_churn=0.0, S_min=0.0, S_max=float("inf"), S_noise=1.0)).items():
                e.info(name, **{f"step.{k}": v})
            e.put(f"{name}/latent", latent)
            e.put(f"{name}/mu", mu)
            e.put(f"{name}/x", xs)
            e.put(f"{name}/sigmas", t_steps)
            e.put(f"{name}/noise", np.stack(tape.draws))
            report.append((name, 0.0))
    return size + e.save(out / "samplers_edm.safetensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/data/golden/diffusion")
    ap.add_argument("--only", default=None, help="comma-separated parts (schedule, families)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.only.split(",") if args.only else (["schedule"] + list(SAMPLERS) + ["cfg", "kdiffusion"])
    report = []
    for p in parts:
        if p == "schedule":
            size = make_schedule(out)
        elif p == "cfg":
            size = make_cfg(out, report)
        elif p == "kdiffusion":
            size = make_kdiffusion(out, report)
        else:
            size = make_diffusers_family(out, p, report)
        print(f"{p}: {size} bytes")
    if report:
        worst = sorted(report, key=lambda r: -r[1])[:8]
        print("largest float32-vs-float64 chain gaps:", json.dumps(worst))
        print("cases:", len(report))


if __name__ == "__main__":
    main()
