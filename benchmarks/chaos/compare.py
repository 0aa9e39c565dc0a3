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


def redelivered(run: dict) -> bool:
    """Whether anything reached the worker twice: a re-read input record recognised, more (or fewer)
    records processed than produced, a score taken a different number of times than published, an
    alert republished. Only then can an episode be re-raised under another id."""
    worker = run["worker"]
    return (
        bool(worker.get("duplicates") or worker.get("alerts_republished"))
        or worker.get("processed") != run["produced"]
        or worker.get("scores_taken") != worker.get("scores_published")
    )


def compare(run: dict, reference: dict) -> dict:
    """Lost and duplicated alerts (see the module docstring), scores lost or changed, ground truth."""

    def by_pair(outcome: dict, refused: bool = True) -> dict[tuple[str, str], set[str]]:
        pairs: dict[tuple[str, str], set[str]] = defaultdict(set)
        for alert_id, pair in outcome["alerts"].items():
            pairs[pair].add(alert_id)
        for alert_id in outcome["suppressed"] if refused else ():
            patient, kind, _ = alert_id.rsplit(":", 2)
            pairs[(patient, kind)].add(alert_id)
        return pairs

    def beyond(got: dict, ref: dict) -> int:
        return sum(max(0, len(ids) - len(ref.get(pair, ()))) for pair, ids in got.items())

    ref, got = by_pair(reference), by_pair(run)
    lost = sorted(f"{p}:{k}" for (p, k) in ref if not got.get((p, k)))
    with_refused = beyond(got, ref)
    duplicated = with_refused if redelivered(run) else beyond(by_pair(run, False), by_pair(reference, False))
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
        "redelivered": redelivered(run),
        "episodes_beyond_reference_with_refused": with_refused,
        "lost_alerts": lost,
        "alerts_stored": len(run["alerts"]),
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
