"""A faulted run against the fault-free reference: alerts lost and duplicated, scores, states."""

from __future__ import annotations

from collections import defaultdict


def worker_summary(stats: dict) -> dict:
    keys = (
        "processed",
        "duplicates",
        "deadlettered",
        "scores_published",
        "scores_taken",
        "alerts_raised",
        "alerts_republished",
        "alerts_suppressed",
        "checkpoints",
        "unacknowledged",
    )
    return {k: stats.get(k) for k in keys} | {
        "scorer": stats.get("scorer"),
        "processed_by_topic": stats.get("processed_by_topic"),
    }


def compare(run: dict, reference: dict) -> dict:
    """Lost and duplicated alerts (see the module docstring), scores lost or changed, ground truth."""

    def by_pair(outcome: dict) -> dict[tuple[str, str], set[str]]:
        pairs: dict[tuple[str, str], set[str]] = defaultdict(set)
        for alert_id, pair in outcome["alerts"].items():
            pairs[pair].add(alert_id)
        for alert_id in outcome["suppressed"]:
            patient, kind, _ = alert_id.rsplit(":", 2)
            pairs[(patient, kind)].add(alert_id)
        return pairs

    ref, got = by_pair(reference), by_pair(run)
    lost = sorted(f"{p}:{k}" for (p, k) in ref if not got.get((p, k)))
    duplicated = sum(max(0, len(ids) - len(ref.get(pair, ()))) for pair, ids in got.items())
    ref_scores, scores = reference["scores"], run["scores"]
    missing = [k for k in ref_scores if k not in scores]
    differing = [k for k in ref_scores if k in scores and scores[k][:2] != ref_scores[k][:2]]
    sick = {t["patient_id"] for t in run["truth"] if t.get("onset_time") is not None}
    alerted = {p for p, _ in run["alerts"].values()}
    sources = defaultdict(int)
    for _, _, source, _ in scores.values():
        sources[source] += 1
    return {
        "lost": len(lost),
        "duplicated": duplicated,
        "lost_alerts": lost,
        "alerts_stored": len(run["alerts"]),
        "fallback_episodes_refused": len(run.get("fallback_refused", ())),
        "refused_episodes": run.get("refusals", []),
        "patient_states_whole": f"{run['states_whole']}/{run['states_total']}",
        "state_fields_differing": run["state_fields_differing"],
        "vital_rows_missing": run["vital_rows_missing"],
        "alert_ids_equal_reference": set(run["alerts"]) == set(reference["alerts"]),
        "deteriorating_alerted": f"{len(alerted & sick)}/{len(sick)}",
        "stable_alerted": len(alerted - sick),
        "scores": {
            "stored": len(scores),
            "reference": len(ref_scores),
            "missing": len(missing),
            "vital_scores_differing": len(differing),
            "by_source": dict(sources),
        },
        "produced": run["produced"],
        "settled": run["settled"],
        "patient_ids_in_logs": run["patient_ids_in_logs"],
        "worker": run["worker"],
        "timeline": run["timeline"],
    }


def all_whole(fraction: str) -> bool:
    whole, total = fraction.split("/")
    return whole == total
