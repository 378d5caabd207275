#!/usr/bin/env python3
"""Golden fixtures: open_clip's contrastive losses and evaluation metrics
(tests/contrastive/test_golden.cpp, tag [golden]).

Make the fixtures (needs torch, numpy and open_clip: `pip install open_clip_torch`; CPU is
enough; the numbers in the tree were made with open_clip 3.3.0):

    python3 tools/golden/make_contrastive_fixtures.py [--out tests/data/golden/contrastive]

Everything is drawn in float64 from fixed seeds. The output (`<out>/VERSIONS.txt` records
the torch / numpy / open_clip versions used):

losses/cases.txt       one line per loss case: "<kind> <case>", kind in {clip, siglip, distill}
losses/<case>/f64/     the case computed by open_clip in float64
losses/<case>/f32/     the same inputs rounded to float32, computed by open_clip in float32
    image.npy, text.npy            (B, D) student embeddings, unit rows (before rounding)
    theta.npy                      () theta = log s, the stored logit-scale parameter
    bias.npy                       () SigLIP logit bias b                   (siglip only)
    teacher_image.npy,             (B, Dt) teacher embeddings, unit rows    (distill only)
    teacher_text.npy
    teacher_scale.npy              () s_t, the teacher's multiplicative scale (distill only)
    loss.npy                       () the loss (distill: contrastive + distill)
    contrastive.npy, distill.npy   () the two terms open_clip returns       (distill only)
    grad_image.npy, grad_text.npy  (B, D) d loss / d embeddings
    grad_theta.npy                 () d loss / d theta (autograd through s = exp(theta))
    grad_bias.npy                  () d loss / d b                          (siglip only)
  The losses are open_clip.loss.ClipLoss()(I, T, exp(theta)),
  SigLipLoss()(I, T, exp(theta), b) and DistillClipLoss()(I, T, exp(theta), It, Tt, s_t)
  (single process); the distill gradients are those of contrastive + distill (the trainer
  sums the two with weight 1); the teacher features carry no gradient.

retrieval/cases.txt    one line per retrieval case: "<case>"
retrieval/<case>/
    scores.npy          (N_images, N_texts) float64 scores, every value exactly a float32
    text_owner.npy      (N_texts) int64: the image each text (caption) belongs to
    image_ranks.npy     (N_images) int64 0-based rank r of each image's best caption
    text_ranks.npy      (N_texts) int64 0-based rank r of each text's image
    image_to_text.npy,  (5) float64: R@1, R@5, R@10, mean rank, median rank
    text_to_image.npy
    source.txt          which code produced the numbers
  Ranks use the stable tie rule r = #{score > s_pos} + #{j < pos : score == s_pos}
  (position in a stable descending sort; open_clip's chunked metrics at HEAD, see
  contrastive.md 1.8); mean rank = mean(r) + 1, median rank = floor(np.median(r)) + 1,
  R@k = mean(r < k). One caption per image (text_owner = arange): the numbers come from
  open_clip_train.train.get_clip_metrics (3.3.0: argsort, ties unspecified) when the case
  has no tie, and the generator asserts they equal the numpy stable rule; with ties they
  come from the numpy stable rule (and source.txt says whether torch's argsort happened to
  agree). Several captions per image: the numpy implementation of big_vision's any-hit rule
  (image->text: the best rank over the image's captions; text->image: the rank of its image).

zero_shot/cases.txt    one line per zero-shot case: "<case>"
zero_shot/<case>/      (float64)
    prompts.npy         (C, K, D) raw (unnormalised) prompt embeddings, K templates per class
    images.npy          (N, D) raw image embeddings
    targets.npy         (N) int64 class of each image
    classifier.npy      (C, D) w_c = normalize(mean_k normalize(t_ck)): open_clip's
                        build_zero_shot_classifier run on a stub model whose encode_text
                        returns these embeddings (normalize=True, as open_clip's models), and
                        transposed (open_clip returns (D, C))
    logits.npy          (N, C) 100 * normalize(image) @ classifier^T (open_clip zero_shot.run)
    correct.npy         (2) top-1 and top-5 correct counts from open_clip_train.zero_shot.accuracy
  The generator asserts a margin between the k-th and (k+1)-th logit of every row, so float32
  rounding cannot change the counts.
"""
import argparse
import math
import pathlib
import shutil

import numpy as np
import torch
import torch.nn.functional as F

try:
    import open_clip
    from open_clip.loss import ClipLoss, DistillClipLoss, SigLipLoss
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from open_clip_train.train import get_clip_metrics
    from open_clip_train.zero_shot import accuracy
except ImportError as e:  # pragma: no cover - a setup problem, not a fixture problem
    raise SystemExit(f"make_contrastive_fixtures.py needs open_clip (pip install open_clip_torch): {e}")

CLIP_INIT = math.log(1 / 0.07)
SIGLIP_INIT = math.log(10.0)
LOG_100 = math.log(100.0)


def save(path, a):
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    np.save(path, np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")))


def unit_rows(g, b, d):
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


# ---- losses --------------------------------------------------------------------------------
# Each case: kind, B, D, theta, extra settings. Teacher width may differ from the student's.

LOSS_CASES = [
    ("clip", "clip_b1_d8_init", dict(b=1, d=8, theta=CLIP_INIT)),
    ("clip", "clip_b5_d8_s100", dict(b=5, d=8, theta=LOG_100)),
    ("clip", "clip_b5_d64_s1", dict(b=5, d=64, theta=0.0)),
    ("clip", "clip_b32_d8_init", dict(b=32, d=8, theta=CLIP_INIT)),
    ("clip", "clip_b32_d64_s100", dict(b=32, d=64, theta=LOG_100)),
    ("siglip", "siglip_b1_d8_init", dict(b=1, d=8, theta=SIGLIP_INIT, bias=-10.0)),
    ("siglip", "siglip_b5_d64_init", dict(b=5, d=64, theta=SIGLIP_INIT, bias=-10.0)),
    ("siglip", "siglip_b5_d8_s100_bias_lit", dict(b=5, d=8, theta=LOG_100, bias=-2.71)),
    ("siglip", "siglip_b32_d8_clipinit_bias_logb", dict(b=32, d=8, theta=CLIP_INIT,
                                                         bias=-math.log(31.0))),
    ("siglip", "siglip_b32_d8_s100_bias0", dict(b=32, d=8, theta=LOG_100, bias=0.0)),
    ("distill", "distill_b1_d8", dict(b=1, d=8, dt=8, theta=CLIP_INIT, teacher_scale=100.0)),
    ("distill", "distill_b5_d64", dict(b=5, d=64, dt=64, theta=LOG_100,
                                       teacher_scale=1 / 0.07)),
    ("distill", "distill_b32_d8_teacher16", dict(b=32, d=8, dt=16, theta=CLIP_INIT,
                                                 teacher_scale=50.0)),
]


def loss_case(out, kind, name, p, seed):
    g = torch.Generator().manual_seed(seed)
    b, d = p["b"], p["d"]
    inputs = {"image": unit_rows(g, b, d), "text": unit_rows(g, b, d)}
    if kind == "distill":
        inputs["teacher_image"] = unit_rows(g, b, p["dt"])
        inputs["teacher_text"] = unit_rows(g, b, p["dt"])
    for sub, dtype in (("f64", torch.float64), ("f32", torch.float32)):
        folder = out / name / sub
        folder.mkdir(parents=True)
        x = {k: v.to(dtype).clone().requires_grad_(k in ("image", "text"))
             for k, v in inputs.items()}
        theta = torch.tensor(p["theta"], dtype=dtype, requires_grad=True)
        scale = theta.exp()
        bias = None
        if kind == "clip":
            loss = ClipLoss()(x["image"], x["text"], scale)
        elif kind == "siglip":
            bias = torch.tensor(p["bias"], dtype=dtype, requires_grad=True)
            loss = SigLipLoss()(x["image"], x["text"], scale, bias)
        else:
            teacher_scale = torch.tensor(p["teacher_scale"], dtype=dtype)
            contrastive, distill = DistillClipLoss()(x["image"], x["text"], scale,
                                                     x["teacher_image"], x["teacher_text"],
                                                     teacher_scale)
            loss = contrastive + distill
            save(folder / "contrastive.npy", contrastive)
            save(folder / "distill.npy", distill)
            save(folder / "teacher_scale.npy", teacher_scale)
        loss.backward()
        assert bool(torch.isfinite(loss)), name
        for k, v in x.items():
            save(folder / f"{k}.npy", v)
        save(folder / "theta.npy", theta)
        save(folder / "loss.npy", loss)
        save(folder / "grad_image.npy", x["image"].grad)
        save(folder / "grad_text.npy", x["text"].grad)
        save(folder / "grad_theta.npy", theta.grad)
        if bias is not None:
            save(folder / "bias.npy", bias)
            save(folder / "grad_bias.npy", bias.grad)


# ---- retrieval -----------------------------------------------------------------------------

def stable_rank(row, pos):
    """Position of entry `pos` in a stable descending sort of `row` (ties: lower index first)."""
    s = row[pos]
    return int(np.sum(row > s) + np.sum(row[:pos] == s))


def ranks_numpy(scores, owner):
    """big_vision's any-hit rule with the stable tie rule: (image ranks, text ranks)."""
    n_img, n_txt = scores.shape
    image_ranks = np.array([min(stable_rank(scores[i], t) for t in range(n_txt) if owner[t] == i)
                            for i in range(n_img)], dtype=np.int64)
    text_ranks = np.array([stable_rank(scores[:, t], owner[t]) for t in range(n_txt)],
                          dtype=np.int64)
    return image_ranks, text_ranks


def summary(r):
    """[R@1, R@5, R@10, mean rank, median rank] exactly as get_clip_metrics computes them."""
    return np.array([np.mean(r < 1), np.mean(r < 5), np.mean(r < 10), r.mean() + 1,
                     np.floor(np.median(r)) + 1], dtype=np.float64)


def open_clip_summary(scores):
    """open_clip_train.train.get_clip_metrics on a square score matrix (pairs on the
    diagonal): image features = the scores, text features = the identity, scale 1, so its
    logits are the scores exactly."""
    n = scores.shape[0]
    m = get_clip_metrics(torch.from_numpy(scores), torch.eye(n, dtype=torch.float64), 1.0)
    return [np.array([m[f"{d}_R@1"], m[f"{d}_R@5"], m[f"{d}_R@10"], m[f"{d}_mean_rank"],
                      m[f"{d}_median_rank"]], dtype=np.float64)
            for d in ("image_to_text", "text_to_image")]


def f32_exact(a):
    return a.astype(np.float32).astype(np.float64)


def retrieval_scores(rng, owner, n_img, noise, quantum=None):
    """Scores of images against captions: a bump for the owned captions plus noise; values
    exactly float32 (optionally multiples of `quantum`, which makes ties)."""
    s = noise * rng.standard_normal((n_img, len(owner)))
    s[owner, np.arange(len(owner))] += 0.5
    if quantum is not None:
        s = np.round(s / quantum) * quantum
    return f32_exact(s)


def retrieval_cases(rng):
    cases = []
    # One caption per image, no ties, N even (median averages two middle ranks).
    owner = np.arange(16, dtype=np.int64)
    cases.append(("pairs_n16", retrieval_scores(rng, owner, 16, 0.3), owner))
    # One caption per image, many ties (including ties with the positive), N odd.
    owner = np.arange(13, dtype=np.int64)
    cases.append(("pairs_ties_n13", retrieval_scores(rng, owner, 13, 0.3, quantum=0.25), owner))
    # Five captions per image (COCO-like), shuffled ownership.
    owner = rng.permutation(np.repeat(np.arange(6, dtype=np.int64), 5))
    cases.append(("multi_5x6", retrieval_scores(rng, owner, 6, 0.4), owner))
    # 1 to 4 captions per image, shuffled, with ties.
    owner = rng.permutation(np.repeat(np.arange(7, dtype=np.int64), [1, 4, 2, 3, 1, 2, 4]))
    cases.append(("multi_uneven_ties", retrieval_scores(rng, owner, 7, 0.4, quantum=0.5), owner))
    return cases


def retrieval_case(out, name, scores, owner):
    folder = out / name
    folder.mkdir(parents=True)
    image_ranks, text_ranks = ranks_numpy(scores, owner)
    i2t, t2i = summary(image_ranks), summary(text_ranks)
    one_to_one = scores.shape[0] == scores.shape[1] and np.array_equal(owner, np.arange(len(owner)))
    has_tie = any(len(np.unique(row)) < len(row) for row in scores) or \
        any(len(np.unique(col)) < len(col) for col in scores.T)
    if one_to_one:
        oc_i2t, oc_t2i = open_clip_summary(scores)
        agree = np.array_equal(oc_i2t, i2t) and np.array_equal(oc_t2i, t2i)
        if not has_tie:
            assert agree, f"{name}: open_clip get_clip_metrics differs from the stable rule"
            i2t, t2i = oc_i2t, oc_t2i
            source = ("open_clip_train.train.get_clip_metrics (open_clip "
                      f"{open_clip.__version__}); equal to the numpy stable rule\n")
        else:
            source = ("numpy stable tie rule (ties present; open_clip "
                      f"{open_clip.__version__} get_clip_metrics uses torch.argsort, whose tie "
                      f"order is unspecified; here it {'agreed' if agree else 'DISAGREED'})\n")
    else:
        source = "numpy implementation of big_vision's any-hit rule with the stable tie rule\n"
    save(folder / "scores.npy", scores)
    save(folder / "text_owner.npy", owner)
    save(folder / "image_ranks.npy", image_ranks)
    save(folder / "text_ranks.npy", text_ranks)
    save(folder / "image_to_text.npy", i2t)
    save(folder / "text_to_image.npy", t2i)
    (folder / "source.txt").write_text(source)
    return source


# ---- zero-shot -----------------------------------------------------------------------------

class StubTextModel:
    """Stands in for a CLIP model in build_zero_shot_classifier: "texts" are row indices into
    a table of raw embeddings, and encode_text(normalize=True) L2-normalises them as
    open_clip's models do (F.normalize)."""

    def __init__(self, table):
        self.table = table

    def encode_text(self, texts, normalize=False):
        x = self.table[texts]
        return F.normalize(x, dim=-1) if normalize else x


def zero_shot_case(out, name, g, c, k, d, n):
    folder = out / name
    folder.mkdir(parents=True)
    centres = torch.randn(c, d, generator=g, dtype=torch.float64)
    # Prompts: class centre plus template noise, random norms (normalisation matters).
    prompts = centres[:, None, :] + 0.6 * torch.randn(c, k, d, generator=g, dtype=torch.float64)
    prompts = prompts * (0.5 + 2.0 * torch.rand(c, k, 1, generator=g, dtype=torch.float64))
    classnames = [f"class{i}" for i in range(c)]
    templates = [f"{{}}|{j}" for j in range(k)]
    index = {f"class{i}|{j}": i * k + j for i in range(c) for j in range(k)}

    def tokenizer(texts):
        return torch.tensor([index[t] for t in texts], dtype=torch.long)

    model = StubTextModel(prompts.reshape(c * k, d))
    w = build_zero_shot_classifier(model, tokenizer, classnames, templates,
                                   num_classes_per_batch=3)  # (D, C), batched over classes
    # The documented math, independently.
    u = prompts / prompts.norm(dim=-1, keepdim=True)
    m = u.mean(dim=1)
    w_ref = m / m.norm(dim=-1, keepdim=True)
    assert torch.allclose(w.T, w_ref, rtol=0, atol=1e-15), "classifier averaging rule"

    targets = torch.randint(0, c, (n,), generator=g)
    while True:
        images = centres[targets] + 1.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
        logits = 100.0 * F.normalize(images, dim=-1) @ w
        top = logits.sort(dim=1, descending=True).values
        # Margins at the top-1 and top-5 boundaries keep float32 counts equal.
        if bool((top[:, 0] - top[:, 1]).min() > 1e-2) and bool((top[:, 4] - top[:, 5]).min() > 1e-2):
            break
    acc1, acc5 = accuracy(logits, targets, topk=(1, 5))
    assert 0 < acc1 < n and acc1 < acc5 < n, "a trivial accuracy tests nothing"
    save(folder / "prompts.npy", prompts)
    save(folder / "images.npy", images)
    save(folder / "targets.npy", targets.to(torch.int64))
    save(folder / "classifier.npy", w.T.contiguous())
    save(folder / "logits.npy", logits)
    save(folder / "correct.npy", np.array([acc1, acc5], dtype=np.float64))
    return acc1, acc5


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = pathlib.Path(__file__).resolve().parents[2]
    ap.add_argument("--out", type=pathlib.Path,
                    default=here / "tests" / "data" / "golden" / "contrastive")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)

    losses = args.out / "losses"
    for n, (kind, name, p) in enumerate(LOSS_CASES):
        loss_case(losses, kind, name, p, seed=20240900 + n)
    (losses / "cases.txt").write_text("".join(f"{k} {n}\n" for k, n, _ in LOSS_CASES))

    retrieval = args.out / "retrieval"
    rng = np.random.default_rng(20240950)
    names = []
    for name, scores, owner in retrieval_cases(rng):
        print(f"retrieval {name}: {retrieval_case(retrieval, name, scores, owner).strip()}")
        names.append(name)
    (retrieval / "cases.txt").write_text("".join(n + "\n" for n in names))

    zero_shot = args.out / "zero_shot"
    g = torch.Generator().manual_seed(20240970)
    zs = [("classes10_templates4", 10, 4, 16, 60), ("classes7_templates1", 7, 1, 8, 30)]
    for name, c, k, d, n in zs:
        acc1, acc5 = zero_shot_case(zero_shot, name, g, c, k, d, n)
        print(f"zero-shot {name}: top-1 {acc1:.0f}/{n}, top-5 {acc5:.0f}/{n}")
    (zero_shot / "cases.txt").write_text("".join(z[0] + "\n" for z in zs))

    versions = (f"open_clip {open_clip.__version__}\ntorch {torch.__version__}\n"
                f"numpy {np.__version__}\n")
    (args.out / "VERSIONS.txt").write_text(versions)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{len(LOSS_CASES)} loss cases, {len(names)} retrieval cases, {len(zs)} zero-shot "
          f"cases, {total} bytes in {args.out}\n{versions}", end="")


if __name__ == "__main__":
    main()
