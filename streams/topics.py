"""Topic names. Every topic is keyed by patient id and has the same partition count."""

VITALS = "icu.vitals"
WAVEFORMS = "icu.waveforms"
LABS = "icu.labs"
CXR = "icu.cxr"
ADT = "icu.adt"
SCORES = "icu.scores"
ALERTS = "icu.alerts"
DEADLETTER = "icu.deadletter"

INPUTS = (VITALS, WAVEFORMS, LABS, CXR, ADT)
OUTPUTS = (SCORES, ALERTS, DEADLETTER)
ALL = INPUTS + OUTPUTS
