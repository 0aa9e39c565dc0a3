"""Metrics of sepsis predictions, per row and per patient, and utility-based threshold tuning.

Every function takes one array per patient (``labels``: the challenge's ``SepsisLabel`` rows,
``probabilities``: ``PredictedProbability``, ``predictions``: ``PredictedLabel``), rows in time
order, one row per hour. Times are row indices (hours since the stay's first row), as in the
challenge's utility; ``t_sepsis`` = first positive label row + 6 (see ``utility.py``).

Alert definitions (per patient, from ``PredictedLabel``):

* **detected** (sensitivity): a septic patient with at least one ``PredictedLabel == 1`` in rows
  ``0 .. t_sepsis + dt_late`` (``t_sepsis + 3``), i.e. at any time up to the end of the utility's
  reward window. An alert long before onset counts as a detection here; the stricter
  ``alerted_in_window`` asks for an alert inside ``t_sepsis - 12 .. t_sepsis + 3``.
* **alerted before onset**: a septic patient with an alert in a row ``< t_sepsis``.
* **lead time** (hours, detected patients only): ``t_sepsis`` minus the first alert row among rows
  ``<= t_sepsis + 3``; positive = before onset, as low as -3. The median is reported.
* **alert episode**: a maximal run of consecutive ``PredictedLabel == 1`` rows; episodes per
  patient-day = all episodes / (all rows / 24), over every patient's whole stay (and separately over
  non-septic patients only: the false-alarm burden).
* **specificity** (per patient): the share of non-septic patients never alerted.

Thresholds: a row is positive when ``probability >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icuwatch.fusion.evaluation.utility import DEFAULT, UtilityParams, best_predictions, normalize, row_utilities

DEFAULT_THRESHOLDS = np.round(np.linspace(0.0, 1.0, 101), 4)


def _concat(arrays: Sequence, dtype=float) -> np.ndarray:
    if len(arrays) == 0:
        return np.zeros(0, dtype=dtype)
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays])


def _check_lengths(labels: Sequence, other: Sequence, what: str) -> None:
    if len(labels) != len(other):
        raise ValueError(f"{len(other)} {what} series for {len(labels)} patients")
    for i, (lab, o) in enumerate(zip(labels, other)):
        if len(lab) != len(o):
            raise ValueError(f"patient {i}: {len(o)} {what} for {len(lab)} labels")


# ------------------------------------------------------------------------------------------ rows


def auroc(labels: Sequence, probabilities: Sequence) -> float:
    """Area under the ROC curve over all rows of all patients (NaN if only one class is present)."""
    from sklearn.metrics import roc_auc_score

    _check_lengths(labels, probabilities, "probability")
    y, p = _concat(labels, int), _concat(probabilities)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def auprc(labels: Sequence, probabilities: Sequence) -> float:
    """Area under the precision-recall curve (average precision) over all rows; NaN without positives."""
    from sklearn.metrics import average_precision_score

    _check_lengths(labels, probabilities, "probability")
    y, p = _concat(labels, int), _concat(probabilities)
    if y.size == 0 or y.max() == 0:
        return float("nan")
    return float(average_precision_score(y, p))


def roc_points(labels: Sequence, probabilities: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over all rows, for plotting."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(_concat(labels, int), _concat(probabilities))
    return fpr, tpr


def pr_points(labels: Sequence, probabilities: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over all rows, for plotting."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(_concat(labels, int), _concat(probabilities))
    return recall, precision


def calibration(labels: Sequence, probabilities: Sequence, n_bins: int = 10) -> tuple[float, list[dict]]:
    """Expected calibration error over all rows, with its reliability bins.

    ``n_bins`` equal-width bins over [0, 1] (bin i holds ``i/n <= p < (i+1)/n``; the last one also
    holds 1.0). ECE = sum over bins of (rows in bin / all rows) * |mean probability - positive rate|.
    Each bin: ``lo``, ``hi``, ``count``, ``mean_probability``, ``positive_rate`` (None when empty).
    """
    _check_lengths(labels, probabilities, "probability")
    y, p = _concat(labels, int), _concat(probabilities)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.floor(p * n_bins).astype(int), 0, n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        in_bin = index == i
        count = int(in_bin.sum())
        mean_p = float(p[in_bin].mean()) if count else None
        rate = float(y[in_bin].mean()) if count else None
        if count:
            ece += count / y.size * abs(mean_p - rate)
        bins.append(
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "count": count,
                "mean_probability": mean_p,
                "positive_rate": rate,
            }
        )
    return (float(ece) if y.size else float("nan")), bins


# -------------------------------------------------------------------------------------- patients


def alert_episodes(predictions) -> int:
    """Number of maximal runs of consecutive 1s."""
    pred = np.asarray(predictions, dtype=int).ravel()
    if pred.size == 0:
        return 0
    return int(pred[0] == 1) + int(np.count_nonzero((pred[1:] == 1) & (pred[:-1] == 0)))


def patient_alert_stats(labels: Sequence, predictions: Sequence, params: UtilityParams = DEFAULT) -> dict:
    """Per-patient alert metrics (definitions in the module docstring)."""
    _check_lengths(labels, predictions, "prediction")
    septic = detected = before_onset = in_window = never_alerted_nonseptic = nonseptic = 0
    lead_times: list[float] = []
    episodes = episodes_nonseptic = rows = rows_nonseptic = 0
    for lab, pred in zip(labels, predictions):
        lab = np.asarray(lab, dtype=int)
        pred = np.asarray(pred, dtype=int)
        n_episodes = alert_episodes(pred)
        episodes += n_episodes
        rows += lab.size
        alerts = np.flatnonzero(pred == 1)
        if lab.any():
            septic += 1
            t_sepsis = int(np.argmax(lab)) - params.dt_optimal
            usable = alerts[alerts <= t_sepsis + params.dt_late]
            if usable.size:
                detected += 1
                lead_times.append(float(t_sepsis - usable[0]))
            before_onset += bool((alerts < t_sepsis).any())
            in_window += bool(((alerts >= t_sepsis + params.dt_early) & (alerts <= t_sepsis + params.dt_late)).any())
        else:
            nonseptic += 1
            never_alerted_nonseptic += alerts.size == 0
            episodes_nonseptic += n_episodes
            rows_nonseptic += lab.size

    def share(k, n):
        return float(k / n) if n else float("nan")

    return {
        "patients": len(labels),
        "septic_patients": septic,
        "sensitivity": share(detected, septic),
        "alerted_before_onset": share(before_onset, septic),
        "alerted_in_window": share(in_window, septic),
        "median_lead_time_h": float(np.median(lead_times)) if lead_times else float("nan"),
        "specificity": share(never_alerted_nonseptic, nonseptic),
        "alerts_per_patient_day": share(episodes, rows / 24.0),
        "alerts_per_patient_day_nonseptic": share(episodes_nonseptic, rows_nonseptic / 24.0),
        "rows": rows,
    }


# ------------------------------------------------------------------------------------ thresholds


def utility_vs_threshold(
    probabilities: Sequence, labels: Sequence, thresholds=DEFAULT_THRESHOLDS, params: UtilityParams = DEFAULT
) -> np.ndarray:
    """Normalized utility of ``PredictedLabel = probability >= threshold`` for each threshold.

    ``probabilities`` and ``labels``: one array per patient. Exact (same as ``normalized_utility`` of
    the re-thresholded predictions), computed with one sort: a row contributes its negative-prediction
    utility plus, when ``p >= threshold``, the difference to its positive-prediction utility.
    """
    _check_lengths(labels, probabilities, "probability")
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=float))
    u_pos, u_neg, best = [], [], 0.0
    for lab in labels:
        pos, neg = row_utilities(lab, params)
        u_pos.append(pos)
        u_neg.append(neg)
        best += float(np.where(best_predictions(lab, params) == 1, pos, neg).sum())
    pos, neg, p = _concat(u_pos), _concat(u_neg), _concat(probabilities)
    inaction = float(neg.sum())
    order = np.argsort(p)
    p_sorted = p[order]
    gain = (pos - neg)[order]
    # suffix[i] = sum of gains of rows order[i:], i.e. of every row with p >= p_sorted[i].
    suffix = np.concatenate([np.cumsum(gain[::-1])[::-1], [0.0]])
    first = np.searchsorted(p_sorted, thresholds, side="left")
    observed = inaction + suffix[first]
    return np.array([normalize(o, best, inaction) for o in observed])


def best_threshold(
    probabilities: Sequence, labels: Sequence, thresholds=DEFAULT_THRESHOLDS, params: UtilityParams = DEFAULT
) -> tuple[float, float]:
    """(threshold, normalized utility) maximizing the utility over ``thresholds`` (the lowest on ties).

    Raises ValueError when the utility is undefined (no septic patient among ``labels``).
    """
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=float))
    utilities = utility_vs_threshold(probabilities, labels, thresholds, params)
    if np.all(np.isnan(utilities)):
        raise ValueError("utility undefined: no septic patient")
    i = int(np.nanargmax(utilities))
    return float(thresholds[i]), float(utilities[i])
