"""CLIP-style joint embedding of chest X-rays and their radiology reports.

Two towers map into one L2-normalised space: image = :class:`~icuwatch.encoders.cxr.CxrEncoder` +
a linear projection, text = :class:`~icuwatch.encoders.text.ReportEncoder` + a linear projection.
Training minimises the symmetric InfoNCE loss (image->text and text->image cross-entropy over the
batch's cosine similarities times a learned temperature ``exp(logit_scale)``).

Synthetic studies may share the very same report text (few do since the films carry findings of
their own and reports are worded per study; the stylised population's template reports repeat a
lot), so the targets are *soft*: an image's target is spread evenly over every text in the batch
identical to its own report (and vice versa) instead of being its own pair alone, which would teach
the model to tell apart images that differ only by noise.

Evaluation on held-out pairs (not trained on):

* instance recall@k: the query's own pair is among the top k (text->image and image->text). With
  duplicated report texts this is capped: identical texts embed identically, so ties are arbitrary.
* finding recall@k: some item among the top k has the query's finding (:func:`finding_label`, the
  ground truth: ``diffuse/moderate``, ``pneumonia/mild``, ``edema``, ``clear``, ...), plus finding
  precision@5 (share of the top 5 with the query's finding) and chance (the share of the held-out
  set with the query's finding).

Library: ``train_joint`` -> (model, card); ``embed_images`` / ``embed_texts``; ``model.save(dir)``
/ ``JointEmbedding.load(dir)`` (``model.pt`` state_dict + ``model_card.json``; default folder
``var/models/joint_embedding``). Training data: ``simulate_studies`` (``sources.simulator.cxr``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from icuwatch.encoders import tokenizer
from icuwatch.encoders.cxr import CxrEncoder
from icuwatch.encoders.cxr import to_tensor as images_to_tensor
from icuwatch.encoders.text import ReportEncoder

MODEL_NAME = "joint_embedding"
MODEL_FILE = "model.pt"
CARD_FILE = "model_card.json"
FORMAT_VERSION = 1

DEFAULT_PAIRS = 3200
DEFAULT_EPOCHS = 20
PATTERN_MIX = {"clear": 0.25, "pneumonia": 0.40, "diffuse": 0.35}
STUDIES_VERSION = 2
"""1: template reports on films with the opacity only; 2: films with findings, varied wording."""


def default_model_dir() -> Path:
    from icuwatch.core.settings import get_settings

    return get_settings().state_dir / "models" / MODEL_NAME


# --------------------------------------------------------------------------------------- data


def finding_label(severity: float, pattern: str, edema: float = 0.0) -> str:
    """The ground-truth finding a study is retrieved by: the opacity's ``pattern/extent``
    ('pneumonia/mild', 'diffuse/extensive', ...) where a reader sees one (``cxr.report``'s cut-offs),
    else 'edema' for a film with pulmonary edema, else 'clear' (lines, tubes, atelectasis and
    effusions do not change it)."""
    if pattern != "clear" and severity >= 0.15:
        extent = "mild" if severity < 0.4 else "moderate" if severity < 0.7 else "extensive"
        return f"{pattern}/{extent}"
    return "edema" if edema > 0.0 else "clear"


def simulate_studies(n: int, seed: int = 0, prior_fraction: float = 0.3) -> tuple[np.ndarray, list[dict]]:
    """``n`` synthetic studies as an ICU's portable films look (the ``icu`` population's): (uint8
    images [n, 224, 224], one dict per study with ``severity``, ``pattern``, ``lobe``,
    ``prior_severity``, ``findings`` (``cxr_findings.as_dict``), ``report``, ``finding``
    (:func:`finding_label`), ``png`` bytes).

    Patterns drawn from ``PATTERN_MIX``; severity uniform in [0.05, 1] for non-clear patterns (below
    0.15 a reader sees no opacity); every film also gets its own findings (atelectasis, effusion,
    edema, lines and tubes: ``cxr_findings.film_findings``), and its report is worded from the
    study's seed (``cxr_findings.describe``), so few reports repeat; a prior study (severity and
    findings, for the comparison sentences) on ``prior_fraction`` of them. Seeded, reproducible.
    """
    from PIL import Image

    from icuwatch.sources.simulator import cxr, cxr_findings

    rng = np.random.default_rng(seed)
    names = list(PATTERN_MIX)
    probs = np.array([PATTERN_MIX[k] for k in names])
    images = np.zeros((n, cxr.SIZE, cxr.SIZE), dtype=np.uint8)
    studies = []
    for i in range(n):
        pattern = names[int(rng.choice(len(names), p=probs))]
        severity = 0.0 if pattern == "clear" else float(rng.uniform(0.05, 1.0))
        lobe = "right" if rng.random() < 0.6 else "left"
        has_prior = rng.random() < prior_fraction
        prior = float(np.clip(severity + rng.normal(0, 0.25), 0, 1)) if has_prior else None
        image_seed = int(rng.integers(2**63))
        findings = cxr_findings.film_findings(rng, lung_disease=pattern == "diffuse")
        prior_findings = cxr_findings.prior_film_findings(findings, rng) if has_prior else None
        png = cxr.render(severity, pattern, lobe, np.random.default_rng(image_seed), findings=findings)
        images[i] = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
        text = cxr.report(
            severity, pattern, lobe, prior, findings=findings, prior_findings=prior_findings, seed=image_seed
        )
        studies.append(
            {
                "severity": round(severity, 4),
                "pattern": pattern,
                "lobe": lobe,
                "prior_severity": None if prior is None else round(prior, 4),
                "findings": cxr_findings.as_dict(findings),
                "report": text,
                "finding": finding_label(severity, pattern, findings.edema),
                "png": png,
            }
        )
    return images, studies


# -------------------------------------------------------------------------------------- model


class JointEmbedding(nn.Module):
    """Image and text towers into one ``embed_dim`` space (unit vectors)."""

    def __init__(self, embed_dim: int = 64, image_dim: int = 128, text_dim: int = 128):
        super().__init__()
        self.config = {"embed_dim": embed_dim, "image_dim": image_dim, "text_dim": text_dim}
        self.image_encoder = CxrEncoder(out_dim=image_dim)
        self.text_encoder = ReportEncoder(out_dim=text_dim)
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.card: dict = {}

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """float32 [B, 1, 224, 224] in [0, 1] -> unit vectors [B, embed_dim]."""
        return F.normalize(self.image_proj(self.image_encoder(x)), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """int [B, L] token ids -> unit vectors [B, embed_dim]."""
        return F.normalize(self.text_proj(self.text_encoder(ids)), dim=-1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(x), self.encode_text(ids)

    def fingerprint(self) -> str:
        """Short hash of the configuration and current weights (keys embedding caches)."""
        h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for name, t in self.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def temperature(self) -> float:
        return float(1.0 / self.logit_scale.detach().clamp(0, math.log(100)).exp())

    def save(self, path: str | Path | None = None) -> Path:
        path = Path(path) if path is not None else default_model_dir()
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (MODEL_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path / MODEL_FILE)
        card = dict(self.card, config=self.config, format_version=FORMAT_VERSION, fingerprint=self.fingerprint())
        (path / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path | None = None) -> "JointEmbedding":
        path = Path(path) if path is not None else default_model_dir()
        card = json.loads((path / CARD_FILE).read_text())
        if card.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: joint embedding format {card.get('format_version')!r}, "
                f"this code reads {FORMAT_VERSION}; retrain"
            )
        model = cls(**card["config"])
        model.load_state_dict(torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True))
        model.card = card
        return model.eval()


def save(model: JointEmbedding, path: str | Path | None = None) -> Path:
    return model.save(path)


def load(path: str | Path | None = None) -> JointEmbedding:
    return JointEmbedding.load(path)


def _tokens(texts) -> np.ndarray:
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (list, tuple)):
        return tokenizer.encode(list(texts))
    return np.asarray(texts)


@torch.no_grad()
def embed_images(model: JointEmbedding, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """float32 [N, embed_dim] unit vectors of uint8 [N, 224, 224] images (or float [N, 1, 224, 224])."""
    model.eval()
    out = [
        model.encode_image(images_to_tensor(images[i : i + batch_size])).numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


@torch.no_grad()
def embed_texts(model: JointEmbedding, texts, batch_size: int = 256) -> np.ndarray:
    """float32 [N, embed_dim] unit vectors of report texts (list of str) or token ids int [N, L]."""
    model.eval()
    ids = _tokens(texts)
    out = [
        model.encode_text(torch.from_numpy(ids[i : i + batch_size].astype(np.int64))).numpy()
        for i in range(0, len(ids), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


# ------------------------------------------------------------------------------------ training


def contrastive_loss(
    model: JointEmbedding, x: torch.Tensor, ids: torch.Tensor, text_group: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE; pairs with the same ``text_group`` (identical reports) share targets."""
    img, txt = model(x, ids)
    logits = model.logit_scale.clamp(0, math.log(100)).exp() * img @ txt.t()
    if text_group is None:
        text_group = torch.arange(len(ids))
    same = (text_group[:, None] == text_group[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


@torch.no_grad()
def evaluate_loss(model: JointEmbedding, images: np.ndarray, tokens: np.ndarray, batch_size: int = 64) -> float:
    """Mean contrastive loss over fixed consecutive batches (no augmentation)."""
    model.eval()
    groups = torch.from_numpy(np.unique(np.asarray(tokens), axis=0, return_inverse=True)[1].reshape(-1))
    losses, weights = [], []
    for i in range(0, len(images), batch_size):
        sl = slice(i, i + batch_size)
        loss = contrastive_loss(
            model, images_to_tensor(images[sl]), torch.from_numpy(np.asarray(tokens[sl], dtype=np.int64)), groups[sl]
        )
        losses.append(float(loss))
        weights.append(len(images[sl]))
    return float(np.average(losses, weights=weights))


def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 8) -> torch.Tensor:
    """Random translation (black fill) and brightness/contrast jitter; no flips (laterality)."""
    b = x.shape[0]
    out = torch.zeros_like(x)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=gen).tolist()
    size = x.shape[-1]
    for k, (dy, dx) in enumerate(shifts):
        ys, yd = (slice(0, size - dy), slice(dy, size)) if dy >= 0 else (slice(-dy, size), slice(0, size + dy))
        xs, xd = (slice(0, size - dx), slice(dx, size)) if dx >= 0 else (slice(-dx, size), slice(0, size + dx))
        out[k, :, yd, xd] = x[k, :, ys, xs]
    gain = 1 + 0.08 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    bias = 0.03 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 2
    return (out * gain + bias).clamp_(0, 1)


def retrieval_metrics(
    img_emb: np.ndarray, txt_emb: np.ndarray, findings: list[str], text_group: np.ndarray | None = None
) -> dict:
    """Held-out retrieval figures (see the module docstring); row i of both is one pair.
    ``text_group``: equal for identical reports (adds image->report recall over distinct reports)."""
    n = len(img_emb)
    sim = img_emb @ txt_emb.T  # [image, text]
    f = np.asarray(findings)
    same = f[:, None] == f[None, :]
    out = {"pairs": int(n)}
    for name, s in (("text_to_image", sim.T), ("image_to_text", sim)):
        order = np.argsort(-s, axis=1, kind="stable")
        for k in (1, 5):
            top = order[:, :k]
            out[f"{name}_recall@{k}"] = float(np.mean((top == np.arange(n)[:, None]).any(axis=1)))
            out[f"{name}_finding_recall@{k}"] = float(np.mean(np.take_along_axis(same, top, 1).any(axis=1)))
        out[f"{name}_finding_precision@5"] = float(np.mean(np.take_along_axis(same, order[:, :5], 1)))
    if text_group is not None:
        text_group = np.asarray(text_group)
        uniq, first = np.unique(text_group, return_index=True)
        order = np.argsort(-(img_emb @ txt_emb[first].T), axis=1, kind="stable")
        for k in (1, 5):
            out[f"image_to_report_recall@{k}"] = float(np.mean((uniq[order[:, :k]] == text_group[:, None]).any(axis=1)))
        out["distinct_reports"] = int(len(uniq))
    out["finding_chance"] = float(same.mean())
    return out


def train_joint(
    images: np.ndarray,
    tokens: np.ndarray,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    progress: bool = True,
    batch_size: int = 64,
    lr: float = 3e-3,
    holdout: float = 0.2,
    findings: list[str] | None = None,
    data: dict | None = None,
    embed_dim: int = 64,
) -> tuple[JointEmbedding, dict]:
    """Train on uint8 images [S, 224, 224] paired with int token ids [S, L]; returns (model, card).

    ``holdout`` of the pairs (seeded) is kept out of training and the retrieval figures are measured
    on it. ``findings``: a finding label per pair for the finding-level figures (default: pairs
    with identical token rows share a finding). ``data``: provenance for the card.
    """
    images = np.asarray(images)
    tokens = np.asarray(tokens)
    if len(images) != len(tokens):
        raise ValueError("images and tokens must pair up one to one")
    from tqdm.auto import tqdm

    started = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    perm = rng.permutation(n)
    n_val = int(round(n * holdout)) if n >= 10 else 0
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    groups_np = np.unique(tokens, axis=0, return_inverse=True)[1].reshape(-1)
    if findings is None:
        findings = [f"report-{g}" for g in groups_np]

    model = JointEmbedding(embed_dim=embed_dim)
    decay = [p for name, p in model.named_parameters() if p.ndim > 1 and "embed.weight" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim > 1 and "embed.weight" not in name)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    warmup = min(50, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / (warmup + 1)
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    groups = torch.from_numpy(groups_np)
    history = []
    bar = tqdm(total=epochs * steps_per_epoch, desc="joint embedding", unit="batch", disable=not progress)
    for epoch in range(epochs):
        model.train()
        order = train_idx[rng.permutation(len(train_idx))]
        losses = []
        for b in range(steps_per_epoch):
            idx = np.sort(order[b * batch_size : (b + 1) * batch_size])
            if len(idx) < 2:
                bar.update(1)
                continue
            x = _augment(images_to_tensor(images[idx]), gen)
            ids = torch.from_numpy(tokens[idx].astype(np.int64))
            loss = contrastive_loss(model, x, ids, groups[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}", T=f"{model.temperature():.3f}")
        history.append(round(float(np.mean(losses)), 4) if losses else None)
    bar.close()
    model.eval()

    metrics = None
    if n_val >= 2:
        metrics = retrieval_metrics(
            embed_images(model, images[val_idx]),
            embed_texts(model, tokens[val_idx]),
            [findings[i] for i in val_idx],
            groups_np[val_idx],
        )
        metrics["heldout_loss"] = round(evaluate_loss(model, images[val_idx], tokens[val_idx], batch_size), 4)
        metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    card = {
        "model": MODEL_NAME,
        "data": data or {"source": "caller-supplied image/report pairs"},
        "sizes": {
            "pairs": n,
            "train": int(len(train_idx)),
            "heldout": int(n_val),
            "distinct_reports": int(groups_np.max() + 1) if n else 0,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "image_encoder_parameters": int(sum(p.numel() for p in model.image_encoder.parameters())),
            "text_encoder_parameters": int(sum(p.numel() for p in model.text_encoder.parameters())),
        },
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "optimizer": "AdamW, warmup + cosine",
            "augmentation": "shift +-8 px, gain/bias jitter",
            "loss": "symmetric InfoNCE, soft targets over identical reports",
            "train_loss_per_epoch": history,
            "temperature": round(model.temperature(), 4),
            "seconds": round(time.time() - started, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "image_input": "uint8 [224, 224] grayscale (encoders.cxr.load_cxr: aspect kept, black padding)",
        "text_input": (
            f"encoders.tokenizer hashed uni+bigrams, vocab {tokenizer.VOCAB_SIZE}, max {tokenizer.MAX_TOKENS}"
        ),
        "heldout_retrieval": metrics,
    }
    model.card = card
    return model, card


def train_on_simulated(
    n: int = DEFAULT_PAIRS,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    progress: bool = True,
    out_dir: str | Path | None = None,
) -> tuple[JointEmbedding, dict]:
    """Simulate ``n`` studies (``simulate_studies``), train, save to ``out_dir`` (default
    ``var/models/joint_embedding``; ``out_dir=False``: don't save)."""
    t0 = time.time()
    images, studies = simulate_studies(n, seed=seed)
    tokens = tokenizer.encode([s["report"] for s in studies])
    data = {
        "source": (
            "synthetic chest X-rays with ICU findings and reports worded per study"
            " (sources.simulator.cxr.render/report, cxr_findings.film_findings/describe)"
        ),
        "studies_version": STUDIES_VERSION,
        "simulate_seed": seed,
        "pattern_mix": PATTERN_MIX,
        "severity": "uniform [0.05, 1] (non-clear)",
        "simulate_seconds": round(time.time() - t0, 1),
    }
    model, card = train_joint(
        images, tokens, seed=seed, epochs=epochs, progress=progress, findings=[s["finding"] for s in studies], data=data
    )
    if out_dir is not False:
        model.save(out_dir)
    return model, card
