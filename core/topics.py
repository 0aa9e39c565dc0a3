"""Topic names. Every topic is keyed by patient id and has the same partition count."""

VITALS = "icu.vitals"
WAVEFORMS = "icu.waveforms"
LABS = "icu.labs"
CXR = "icu.cxr"
ADT = "icu.adt"
SCORES = "icu.scores"
ALERTS = "icu.alerts"
DEADLETTER = "icu.deadletter"
SHADOW_SCORES = "icu.shadow-scores"
"""The shadow model's scores (``Settings.shadow_model``): read by the shadow agent only."""

INPUTS = (VITALS, WAVEFORMS, LABS, CXR, ADT)
OUTPUTS = (SCORES, ALERTS, DEADLETTER, SHADOW_SCORES)
ALL = INPUTS + OUTPUTS

TABLES = ("patient_state", "alert_state", "shadow_alert_state")
"""The worker's Faust tables; each has a changelog topic, co-partitioned with the rest."""


def changelogs(app_id: str) -> tuple[str, ...]:
    """The worker's table changelog topics (Faust names them ``<app id>-<table>-changelog``)."""
    return tuple(f"{app_id}-{table}-changelog" for table in TABLES)


def leader_topic(app_id: str) -> str:
    """Faust's leader-election topic (one partition), in every worker's subscription."""
    return f"{app_id}-__assignor-__leader"
