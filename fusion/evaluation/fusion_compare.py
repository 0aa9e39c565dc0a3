"""``icuwatch evaluate fusion``: every trained fusion strategy and the baselines, side by side, with
all modalities and with 30 % / 50 % of them missing, on each cohort's TEST split.

Missingness is drawn per stay (patient) and modality, seeded: a dropped modality is absent for the
whole stay, as when a system is not connected. A stay never loses every modality (one is kept at
random among those it has), so the share of the modalities stays have that is actually dropped is
a little below the nominal rate; it is reported. The
baselines see the same draw: on PhysioNet the dropped modality's columns are blanked in the stay
before the rule scores and the gradient-boosted trees compute their features.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from icuwatch.fusion.cohorts.base import Cohort
from icuwatch.fusion.evaluation import metrics
from icuwatch.fusion.training import per_group, predict_logits

MISSING_RATES = (0.0, 0.3, 0.5)
LATENCY_BATCH = 256


def keep_mask(
    n_groups: int, n_modalities: int, rate: float, seed: int = 0, available: np.ndarray | None = None
) -> np.ndarray:
    """[groups, modalities] True = kept. Each modality dropped with probability ``rate``; a group
    that would lose every modality it has (``available`` [groups, modalities], default all) keeps
    one of them, chosen at random."""
    rng = np.random.default_rng([seed, int(round(rate * 1000))])
    keep = rng.random((n_groups, n_modalities)) >= rate
    has = np.ones_like(keep) if available is None else available
    for g in np.flatnonzero(~(keep & has).any(axis=1) & has.any(axis=1)):
        keep[g, rng.choice(np.flatnonzero(has[g]))] = True
    return keep


def available_modalities(cohort: Cohort) -> np.ndarray:
    """[groups, modalities]: whether the group has the modality in any of its rows."""
    out = np.zeros((len(cohort.group_ids), len(cohort.modalities)), dtype=bool)
    np.logical_or.at(out, cohort.group, cohort.present)
    return out


def row_metrics(y: list[np.ndarray], p: list[np.ndarray], threshold: float) -> dict:
    from icuwatch.fusion.evaluation.utility import normalized_utility

    pred = [(q >= threshold).astype(int) for q in p]
    ece, _ = metrics.calibration(y, p)
    alerts = metrics.patient_alert_stats(y, pred)
    return {
        "auroc": metrics.auroc(y, p),
        "auprc": metrics.auprc(y, p),
        "ece": ece,
        "utility": normalized_utility(y, pred),
        "sensitivity": alerts["sensitivity"],
        "alerts_per_patient_day": alerts["alerts_per_patient_day"],
        "threshold": threshold,
    }


def _latency_ms(run, n_rows: int) -> dict:
    """Median wall ms per patient, scoring one at a time and in batches of ``LATENCY_BATCH``."""
    single = []
    for i in range(30):
        t = time.perf_counter()
        run(np.array([i % n_rows]))
        single.append(time.perf_counter() - t)
    batched = []
    idx = np.arange(min(LATENCY_BATCH, n_rows))
    for _ in range(5):
        t = time.perf_counter()
        run(idx)
        batched.append((time.perf_counter() - t) / len(idx))
    return {
        "latency_ms_batch1": round(1e3 * float(np.median(single)), 3),
        f"latency_ms_per_patient_batch{LATENCY_BATCH}": round(1e3 * float(np.median(batched)), 4),
    }


def mean_contributions(model, cohort: Cohort, rows: np.ndarray, limit: int = 20000) -> dict[str, float]:
    """Mean per-modality contribution (attention weight or leave-one-out delta) over test rows."""
    import torch

    from icuwatch.fusion.cohorts.base import gather
    from icuwatch.fusion.strategies.base import to_tensors

    rows = rows[:: max(1, len(rows) // limit)]
    total = np.zeros(len(cohort.modalities))
    with torch.no_grad():
        for s in range(0, len(rows), 2048):
            total += model.contributions(to_tensors(gather(cohort, rows[s : s + 2048]))).numpy().sum(axis=0)
    return {m: round(float(v / len(rows)), 4) for m, v in zip(cohort.modalities, total)}


def fusion_rows(
    cohort: Cohort, test: np.ndarray, keeps: dict[float, np.ndarray], progress: bool, curves: dict | None = None
) -> list[dict]:
    import torch

    from icuwatch.fusion import model_store

    rows = []
    groups = cohort.group[test]
    y = per_group(cohort.y[test], groups)
    for name in model_store.trained_names():
        if not name.endswith(f"-{cohort.name}"):
            continue
        trained = model_store.load(model_store.model_dir(name))
        if trained.card["data"]["meta"].get("norm") != cohort.meta.get("norm"):
            print(
                f"evaluate fusion: {name} was trained on another build of the {cohort.name} cohort "
                "(different normalisation, e.g. --limit); retrain it on the full cohort. Skipped.",
                file=sys.stderr,
            )
            continue
        torch.set_num_threads(1)
        lat = _latency_ms(lambda idx: predict_logits(trained.model, cohort, test[idx]), len(test))
        torch.set_num_threads(2)
        for rate, keep in keeps.items():
            present = cohort.present[test] & keep[groups]
            logits = predict_logits(trained.model, cohort, test, present=present, progress=progress)
            p = per_group(trained.probabilities(logits), groups)
            extra = {}
            if rate == 0.0:
                extra["mean_contributions"] = mean_contributions(trained.model, cohort, test)
                if curves is not None:
                    curves[name] = p
            rows.append(
                {
                    "model": name,
                    "kind": "fusion",
                    "strategy": trained.card["strategy"],
                    "missing": rate,
                    **row_metrics(y, p, trained.threshold),
                    "parameters": trained.card["parameters"],
                    **lat,
                    **extra,
                }
            )
    return rows


def physionet_baseline_rows(
    cohort: Cohort, test: np.ndarray, keeps: dict[float, np.ndarray], progress: bool, curves: dict | None = None
) -> list[dict]:
    """NEWS2, qSOFA, the rule sepsis score and (once trained) the gradient-boosted trees."""
    from dataclasses import replace

    from tqdm import tqdm

    from icuwatch.fusion.psv_predict import predictor
    from icuwatch.sources.physionet import LAB_COLUMNS, VITAL_COLUMNS, read_psv

    models = {}
    for name in ("news2", "qsofa", "rules", "gbt"):
        try:
            models[name] = predictor(name)
        except FileNotFoundError:
            continue
    data_dir = Path(cohort.meta["data_dir"])
    group_index = np.unique(cohort.group[test])
    stays = [read_psv(data_dir / f"{cohort.group_ids[g]}.psv") for g in group_index]
    blanks = [[c for c in VITAL_COLUMNS], [c for c in LAB_COLUMNS]]
    by_model = {name: {rate: ([], []) for rate in keeps} for name in models}
    for g, stay in tqdm(
        list(zip(group_index, stays)), desc="baselines", unit="stay", disable=not progress, file=sys.stderr
    ):
        for rate, keep in keeps.items():
            values = stay.values.copy()
            for j, columns in enumerate(blanks):
                if not keep[g, j]:
                    values[:, [stay.columns.index(c) for c in columns if c in stay.columns]] = np.nan
            masked = replace(stay, values=values)
            for name, (predict, _) in models.items():
                by_model[name][rate][0].append(stay.labels)
                by_model[name][rate][1].append(np.asarray(predict(masked), dtype=float))
    rows = []
    for name, (predict, threshold) in models.items():
        lat = _latency_ms(lambda idx: [predict(stays[i]) for i in idx], len(stays))
        lat = {k.replace("patient", "stay"): v for k, v in lat.items()}
        for rate in keeps:
            y, p = by_model[name][rate]
            if rate == 0.0 and curves is not None:
                curves[name] = p
            rows.append(
                {
                    "model": name,
                    "kind": "gbt" if name == "gbt" else "rule",
                    "missing": rate,
                    **row_metrics(y, p, threshold),
                    "parameters": None,
                    **lat,
                    "latency_note": "per whole stay (all its hours), features included",
                }
            )
    return rows


def figures(out_dir: Path, cohort_name: str, y: list[np.ndarray], curves: dict, table: list[dict]) -> dict:
    """ROC and reliability at 0 % missing, and AUROC against the missing rate, as PNGs."""
    from icuwatch.fusion.evaluation import plots

    zero = {r["model"]: r for r in table if r["missing"] == 0.0}
    out = {
        "roc": str(
            plots.roc_plot(
                out_dir / f"{cohort_name}-roc.png", y, curves, {m: zero[m]["auroc"] for m in curves if m in zero}
            )
        )
    }
    bins = {m: metrics.calibration(y, p)[1] for m, p in curves.items()}
    out["reliability"] = str(
        plots.reliability_plot(
            out_dir / f"{cohort_name}-reliability.png", bins, {m: zero[m]["ece"] for m in curves if m in zero}
        )
    )
    plt = plots._plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in table if r["kind"] != "reference"):
        pts = sorted((r["missing"], r["auroc"]) for r in table if r["model"] == model)
        ax.plot([100 * a for a, _ in pts], [b for _, b in pts], marker="o", label=model)
    ax.set_xlabel("modalities missing (nominal %, per stay)")
    ax.set_ylabel("AUROC (test split)")
    ax.set_title(f"{cohort_name}: robustness to missing modalities")
    ax.legend(fontsize=7)
    out["auroc_vs_missing"] = str(plots._save(fig, out_dir / f"{cohort_name}-auroc-vs-missing.png"))
    return out


def compare(
    cohort_names=("physionet", "sim"),
    rates=MISSING_RATES,
    seed: int = 0,
    progress: bool = True,
    baselines: bool = True,
    out_dir: Path | None = None,
) -> dict:
    from icuwatch.fusion import cohorts

    started = time.time()
    out = {
        "machine": {"cpu_cores": _cores(), "python": platform.python_version(), "gpu": None},
        "missingness": __doc__.split("\n\n")[1].replace("\n", " "),
        "cohorts": {},
    }
    for name in cohort_names:
        cohort = cohorts.load(name, progress=progress)
        test = cohort.rows("test")
        has = available_modalities(cohort)
        keeps = {r: keep_mask(len(cohort.group_ids), len(cohort.modalities), r, seed, has) for r in rates}
        test_groups = np.unique(cohort.group[test])
        dropped = {
            str(r): round(float(1 - (k & has)[test_groups].sum() / has[test_groups].sum()), 3) for r, k in keeps.items()
        }
        curves: dict = {}
        rows = fusion_rows(cohort, test, keeps, progress, curves)
        if not rows:
            print(
                f"evaluate fusion: no trained fusion model for the {name} cohort in var/models; "
                f"`icuwatch train --strategy all --cohort {name}` makes them. Baselines only.",
                file=sys.stderr,
            )
        y_groups = per_group(cohort.y[test], cohort.group[test])
        rows.append(
            {
                "model": "always-alarm",
                "kind": "reference",
                "missing": 0.0,
                **row_metrics(y_groups, [np.ones(len(g)) for g in y_groups], 0.5),
                "parameters": None,
                "note": "every row alarms: the utility a metric-gaming model would get",
            }
        )
        if baselines and name == "physionet":
            rows += physionet_baseline_rows(cohort, test, keeps, progress, curves)
        elif baselines and name == "sim":
            from icuwatch.fusion.evaluation.sim_baselines import sim_baseline_rows

            rows += sim_baseline_rows(cohort, test, keeps, curves)
        out["cohorts"][name] = {
            "data": cohort.meta.get("source", name),
            "modalities": list(cohort.modalities),
            "split": "test",
            "patients": int(len(test_groups)),
            "rows": int(len(test)),
            "positive_rows": int(cohort.y[test].sum()),
            "dropped_modality_share": dropped,
            "table": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
        }
        if out_dir is not None and rows:
            y = per_group(cohort.y[test], cohort.group[test])
            out["cohorts"][name]["figures"] = figures(Path(out_dir), name, y, curves, rows)
    out["seconds"] = round(time.time() - started, 1)
    return out


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def markdown(summary: dict) -> str:
    lines = [
        "# Fusion strategies compared",
        "",
        f"Machine: {summary['machine']['cpu_cores']} CPU cores, no GPU. {summary['missingness']}",
        "",
    ]
    for name, c in summary["cohorts"].items():
        lines += [
            f"## {name}: {c['data']}",
            "",
            *(
                [
                    f"Utility on this cohort is not informative: every row alarming scores "
                    f"{next(r['utility'] for r in c['table'] if r['model'] == 'always-alarm'):.3f} (half the simulated "
                    "patients deteriorate, none recovers); compare AUROC, AUPRC and ECE.",
                    "",
                ]
                if any(r["model"] == "always-alarm" and r["utility"] > 0.5 for r in c["table"])
                else []
            ),
            f"TEST split: {c['patients']} patients, {c['rows']} rows ({c['positive_rows']} positive). "
            f"Modalities: {', '.join(c['modalities'])}. Share of modalities actually dropped: "
            f"{c['dropped_modality_share']}.",
            "",
            "| model | missing | AUROC | AUPRC | utility | ECE | alerts/patient-day | parameters "
            "| ms/patient (batch 1) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in c["table"]:

            def f(k):
                v = r.get(k)
                return (
                    "–"
                    if v is None or (isinstance(v, float) and np.isnan(v))
                    else (f"{v:.3f}" if isinstance(v, float) else str(v))
                )

            if "latency_ms_batch1" in r:
                latency = f"{r['latency_ms_batch1']}{' per stay' if r['kind'] != 'fusion' else ''}"
            elif "latency_ms_per_patient_batch256" in r:
                latency = f"{r['latency_ms_per_patient_batch256']} per row, batched"
            else:
                latency = "–"
            lines.append(
                f"| {r['model']} | {int(r['missing'] * 100)} % | {f('auroc')} | {f('auprc')} | {f('utility')} "
                f"| {f('ece')} | {f('alerts_per_patient_day')} | {f('parameters')} | {latency} |"
            )
        lines.append("")
        contrib = [(r["model"], r["mean_contributions"]) for r in c["table"] if r.get("mean_contributions")]
        if contrib:
            lines += [
                "Mean per-modality contribution on the test rows (attention: share of the context token's "
                "attention; others: leave-one-modality-out change in probability):",
                "",
            ]
            lines += [f"* {m}: " + ", ".join(f"{k} {v:+.3f}" for k, v in d.items()) for m, d in contrib]
            lines.append("")
        for label, path in c.get("figures", {}).items():
            lines.append(f"![{name} {label}]({Path(path).name})")
        lines.append("")
    return "\n".join(lines)


def write_report(summary: dict, out: Path) -> Path:
    """``summary.json`` and ``report.md`` in ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = out / "report.md"
    report.write_text(markdown(summary))
    return report
