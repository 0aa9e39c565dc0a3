"""Evaluation figures (matplotlib, Agg, PNG). Several models overlay on ROC, PR and utility plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icuwatch.fusion.evaluation import metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def roc_plot(path: Path, labels: list, models: dict[str, list], aurocs: dict[str, float | None]) -> Path:
    """``models``: name -> per-patient probabilities."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, probs in models.items():
        fpr, tpr = metrics.roc_points(labels, probs)
        auc = aurocs.get(name)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(
        xlabel="false positive rate", ylabel="true positive rate", title="ROC, hourly rows", xlim=(0, 1), ylim=(0, 1.01)
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def pr_plot(path: Path, labels: list, models: dict[str, list], auprcs: dict[str, float | None]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, probs in models.items():
        recall, precision = metrics.pr_points(labels, probs)
        auc = auprcs.get(name)
        ax.plot(recall, precision, label=f"{name} (AUPRC {auc:.3f})" if auc is not None else name)
    prevalence = float(np.concatenate(labels).mean()) if labels else 0.0
    ax.axhline(prevalence, ls=":", c="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall, hourly rows", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def reliability_plot(path: Path, bins_by_model: dict[str, list[dict]], eces: dict[str, float | None]) -> Path:
    """Reliability diagram (observed rate per bin) and rows per bin (log scale)."""
    plt = _plt()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfectly calibrated")
    width = 1.0 / max(1, len(next(iter(bins_by_model.values()), [])))
    for k, (name, bins) in enumerate(bins_by_model.items()):
        used = [b for b in bins if b["count"]]
        ece = eces.get(name)
        ax.plot(
            [b["mean_probability"] for b in used],
            [b["positive_rate"] for b in used],
            marker="o",
            label=f"{name} (ECE {ece:.3f})" if ece is not None else name,
        )
        offset = (k + 0.5) / len(bins_by_model) * width
        axn.bar(
            [b["lo"] + offset for b in bins], [b["count"] for b in bins], width=width / len(bins_by_model), alpha=0.7
        )
    ax.set(ylabel="observed positive rate", title="Reliability (10 equal-width bins)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    axn.set(xlabel="predicted probability", ylabel="rows")
    axn.set_yscale("log")
    from matplotlib.ticker import LogFormatter

    axn.yaxis.set_major_formatter(LogFormatter())  # plain numbers, no mathtext
    return _save(fig, path)


def utility_threshold_plot(
    path: Path, thresholds: np.ndarray, curves: dict[str, np.ndarray], own: dict[str, tuple[float | None, float | None]]
) -> Path:
    """Utility of re-thresholded probabilities; ``own``: name -> (implied threshold, utility of its labels)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        (line,) = ax.plot(thresholds, curve, label=name)
        thr, util = own.get(name, (None, None))
        if thr is not None and util is not None:
            ax.plot([thr], [util], marker="o", c=line.get_color())
    ax.axhline(0, c="grey", lw=1, ls=":")
    ax.set(
        xlabel="threshold on PredictedProbability",
        ylabel="normalized utility",
        title="Utility against threshold (dot: the model's own labels)",
        xlim=(0, 1),
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def timelines_plot(path: Path, examples: list[dict]) -> Path:
    """One panel per example: ``patient_id``, ``iculos``, ``labels``, ``models`` (name -> probabilities),
    ``thresholds`` (name -> float or None)."""
    plt = _plt()
    n = max(1, len(examples))
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.3 * n), squeeze=False)
    for ax, ex in zip(axes[:, 0], examples):
        hours, labels = np.asarray(ex["iculos"]), np.asarray(ex["labels"])
        for name, probs in ex["models"].items():
            (line,) = ax.plot(hours, probs, lw=1.3, label=name)
            thr = ex["thresholds"].get(name)
            if thr is not None:
                ax.axhline(thr, c=line.get_color(), ls="--", lw=0.8)
        title = f"{ex['patient_id']} ({'septic' if labels.any() else 'not septic'}, {len(labels)} h)"
        if labels.any():
            onset = float(hours[int(np.argmax(labels))])
            ax.axvline(onset, c="orange", lw=1, label="SepsisLabel = 1 from")
            ax.axvline(onset + 6, c="red", lw=1.2, label="t_sepsis")
        ax.set(ylim=(-0.02, 1.02), ylabel="probability", title=title)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("ICULOS (hours); dashed: thresholds")
    return _save(fig, path)
