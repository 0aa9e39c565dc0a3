"""The PhysioNet 2019 row layout that the worker and the models share: the challenge's column names
(and the ``icu.vitals`` field / ``icu.labs`` analyte each maps to), and the channels of the
PhysioNet-cohort row that the distilled student reads (``fusion/cohorts/physionet.py`` builds it
offline from ``.psv`` files, ``streams/student_row.py`` online from a patient's state).

Changing a channel or the transform is a model interface change: bump the cohort's
``COHORT_VERSION``.
"""

from __future__ import annotations

import numpy as np

VITAL_COLUMNS = {"HR": "hr", "O2Sat": "spo2", "Temp": "temp", "SBP": "sbp", "MAP": "map", "DBP": "dbp", "Resp": "rr"}
"""PSV column -> ``icu.vitals`` field."""

LAB_COLUMNS = {
    "BaseExcess": "base_excess",
    "HCO3": "bicarbonate",
    "FiO2": "fio2",
    "pH": "ph",
    "PaCO2": "paco2",
    "SaO2": "sao2",
    "AST": "ast",
    "BUN": "bun",
    "Alkalinephos": "alkaline_phosphatase",
    "Calcium": "calcium",
    "Chloride": "chloride",
    "Creatinine": "creatinine",
    "Bilirubin_direct": "bilirubin_direct",
    "Glucose": "glucose",
    "Lactate": "lactate",
    "Magnesium": "magnesium",
    "Phosphate": "phosphate",
    "Potassium": "potassium",
    "Bilirubin_total": "bilirubin",
    "TroponinI": "troponin_i",
    "Hct": "hematocrit",
    "Hgb": "hemoglobin",
    "PTT": "ptt",
    "WBC": "wbc",
    "Fibrinogen": "fibrinogen",
    "Platelets": "platelets",
    "EtCO2": "etco2",
}
"""PSV column -> ``icu.labs`` analyte (units as the challenge gives them; see ``schemas.LAB_UNITS``)."""

DEMOGRAPHIC_COLUMNS = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS")

MODALITIES = ("vitals", "labs")
T = 8
"""Hourly steps of the vitals window (t-7 .. t)."""
Z_CLIP = 10.0
"""Z-scores are clipped to +-Z_CLIP (a few charted values are far off: WBC 440, FiO2 -50, AST 9961)."""
LAB_HOURS_SCALE = 5.0

VITALS: tuple[str, ...] = tuple(VITAL_COLUMNS)
LABS: tuple[str, ...] = tuple(LAB_COLUMNS)
STATIC_CHANNELS: tuple[str, ...] = (
    "age_div100",  # Age / 100 (the challenge caps ages at 100); NaN -> 0
    "gender",  # Gender (1 male, 0 female); NaN -> 0
    "unit1",  # Unit1 (MICU), NaN -> 0
    "unit2",  # Unit2 (SICU), NaN -> 0
    "unit_known",  # 1 where Unit1 or Unit2 is given (30% of set B rows give neither)
    "hosp_adm_time_div1000",  # HospAdmTime / 1000 (hours, <= 0), clipped to [-1, 1]; NaN -> 0
    "iculos_div100",  # the row's hour (ICULOS, else row number + 1) / 100
)
VITALS_LAYOUT: tuple[str, ...] = tuple(f"{c}_z" for c in VITALS) + tuple(f"{c}_measured" for c in VITALS)
LABS_LAYOUT: tuple[str, ...] = tuple(
    name for c in LABS for name in (f"{c}_z", f"{c}_measured_ever", f"{c}_log1p_hours_since_div5")
)


def zscore(x: np.ndarray, stats: dict, clip: float) -> np.ndarray:
    """``(x - mean) / std`` per channel (``stats``: ``{"mean": [...], "std": [...]}``), clipped to
    +-``clip``, 0 where ``x`` is NaN."""
    z = np.clip(
        (x - np.asarray(stats["mean"], dtype=np.float64)) / np.asarray(stats["std"], dtype=np.float64), -clip, clip
    )
    return np.where(np.isnan(z), 0.0, z)


def normalised(x: np.ndarray, norm: dict, name: str) -> np.ndarray:
    """``x`` z-scored with the cohort norm ``norm[name]`` (a model card's ``data.meta.norm``)."""
    return zscore(x, norm[name], float(norm.get("z_clip", Z_CLIP)))
