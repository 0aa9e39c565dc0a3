"""The live cohort: PhysioNet 2019 stays and simulated bedside patients in one layout
(``core.live_row``), for the one student that scores both streams the worker meets.

* **PhysioNet rows** (``fusion.cohorts.physionet``, real stays): vitals, labs and static as that
  cohort has them; waveforms, X-ray and report absent (zeros, ``present`` False). Sepsis label:
  ``SepsisLabel``. Deterioration: unknown (NaN), the data has no other outcome.
* **Simulated rows** (``fusion.cohorts.sim``, the ``icu`` population: ``SIM_POPULATION``): every
  modality. Vitals and labs are re-expressed in
  the PhysioNet cohort's normalisation (the raw value back from the simulator cohort's z-score, then
  z-scored with PhysioNet's), its 14 analytes placed in PhysioNet's 27 (PaO2, which PhysioNet
  does not report, is dropped). Waveforms: the newest hour's ECG heart rate, z-scored with the
  layout's fixed ``core.live_row.WAVEFORM_NORM``; the simulated PPG
  pulses ride the same beat train, so its pulse rate is that same number. X-ray: the shown study's
  thumbnail; report: its bag of words (``core.live_row``). Static: age, sex, the unit (MICU/SICU
  flags, as the worker reads the simulator's ADT), no hospital admission time (the simulator sends
  none), hours since admission. Labels: sepsis = the simulated onset rule for septic patients;
  deterioration = the same rule for every deteriorating patient (sepsis, hemorrhage, respiratory
  failure).

Splits are each source's own (PhysioNet's hash split, the simulator cohort's), so no stay or
patient is in two splits. The cache key names both sources' builds; a change to this layout bumps
``core.live_row.COHORT_VERSION``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from icuwatch.core import live_row
from icuwatch.core.physionet_row import LAB_COLUMNS, LABS, Z_CLIP
from icuwatch.fusion.cohorts.base import Cohort, default_cache_dir, load_or_build_cached

NAME = "live"
SIM_POPULATION = "icu"
"""The simulated patients are the ``icu`` population (``sim_icu``: fitted to real stays, a real unit's
share deteriorating), so the student learns from patients whose baselines and charts look real."""
SOURCES = ("physionet", "sim")
PN_LABS: tuple[str, ...] = tuple(LAB_COLUMNS[c] for c in LABS)


def _renorm(z: np.ndarray, keep: np.ndarray, src: dict, dst: dict, clip: float) -> np.ndarray:
    """Z-scores under ``src`` stats re-expressed under ``dst`` where ``keep``; 0 elsewhere."""
    raw = z * np.asarray(src["std"], np.float64) + np.asarray(src["mean"], np.float64)
    out = np.clip((raw - np.asarray(dst["mean"], np.float64)) / np.asarray(dst["std"], np.float64), -clip, clip)
    return np.where(keep, out, 0.0).astype(np.float32)


def _physionet_part(pn: Cohort) -> dict:
    n = len(pn)
    present = np.zeros((n, 5), bool)
    staleness = np.zeros((n, 5), np.float32)
    for src, dst in ((0, 0), (1, 2)):  # vitals, labs
        present[:, dst] = pn.present[:, src]
        staleness[:, dst] = pn.staleness_h[:, src]
    return {
        "inputs": {
            "vitals": pn.inputs["vitals"],
            "waveforms": np.zeros((n, 2 * len(live_row.WAVEFORM_CHANNELS)), np.float32),
            "labs": pn.inputs["labs"],
            "cxr": np.full(n, -1, np.int32),
            "report": np.full(n, -1, np.int32),
            "static": pn.inputs["static"],
        },
        "present": present,
        "staleness_h": staleness,
        "y": pn.y.astype(np.int8),
        "deterioration": np.full(n, np.nan, np.float32),
    }


def _sim_part(sim: Cohort, pn_norm: dict) -> dict:
    n = len(sim)
    sn = sim.meta["norm"]
    clip = float(pn_norm.get("z_clip", Z_CLIP))
    vit = sim.inputs["vitals"]
    c = vit.shape[-1] // 2
    measured = vit[:, :, c:] > 0
    vitals = np.concatenate([_renorm(vit[:, :, :c], measured, sn["vitals"], pn_norm["vitals"], clip), vit[:, :, c:]], 2)

    sim_labs = sim.meta["lab_channels"]
    labs = np.zeros((n, 3 * len(PN_LABS)), np.float32)
    src_labs = sim.inputs["labs"].reshape(n, len(sim_labs), 3)
    dst_labs = labs.reshape(n, len(PN_LABS), 3)
    for a, analyte in enumerate(sim_labs):
        if analyte not in PN_LABS:
            continue
        j = PN_LABS.index(analyte)
        ever = src_labs[:, a, 1] > 0
        src = {"mean": [sn["labs"]["mean"][a]], "std": [sn["labs"]["std"][a]]}
        dst = {"mean": [pn_norm["labs"]["mean"][j]], "std": [pn_norm["labs"]["std"][j]]}
        dst_labs[:, j, 0] = _renorm(src_labs[:, a, 0:1], ever[:, None], src, dst, clip)[:, 0]
        dst_labs[:, j, 1:] = src_labs[:, a, 1:]
    labs = dst_labs.reshape(n, -1)

    waves = sim.inputs["waveforms"][:, -1, :]  # the newest hour
    ecg_z, ecg_measured = waves[:, 0], waves[:, len(sim.meta["waveform_channels"])] > 0
    waveforms = np.zeros((n, 4), np.float32)
    sim_ecg = {"mean": [sn["waveforms"]["mean"][0]] * 2, "std": [sn["waveforms"]["std"][0]] * 2}
    both = np.repeat(ecg_z[:, None], 2, axis=1)  # the PPG pulse rate is the ECG heart rate (above)
    waveforms[:, :2] = _renorm(both, ecg_measured[:, None], sim_ecg, live_row.WAVEFORM_NORM, clip)
    waveforms[:, 2] = waveforms[:, 3] = ecg_measured

    patients = sim.meta["patients"]
    unit = np.array([p["unit"] for p in patients])[sim.group]
    conditions = np.array([p["condition"] for p in patients])[sim.group]
    s = sim.inputs["static"]  # age/100, gender, hours/100
    static = np.stack(
        [s[:, 0], s[:, 1], unit == "MICU", unit == "SICU", np.ones(n), np.zeros(n), s[:, 2]], axis=1
    ).astype(np.float32)

    present = sim.present.copy()
    present[:, 1] &= ecg_measured
    staleness = np.where(present, sim.staleness_h, 0.0).astype(np.float32)
    waveforms[~present[:, 1]] = 0.0
    return {
        "inputs": {
            "vitals": vitals,
            "waveforms": waveforms,
            "labs": labs,
            "cxr": sim.inputs["cxr"].astype(np.int32),
            "report": sim.inputs["report"].astype(np.int32),
            "static": static,
        },
        "present": present,
        "staleness_h": staleness,
        "y": (sim.y.astype(bool) & (conditions == "sepsis")).astype(np.int8),
        "deterioration": sim.y.astype(np.float32),
    }


def build(pn: Cohort, sim: Cohort) -> Cohort:
    """The live cohort from a built PhysioNet cohort and a built simulator cohort."""
    if tuple(sim.modalities) != live_row.MODALITIES:
        raise ValueError(f"the simulator cohort's modalities {sim.modalities} are not {live_row.MODALITIES}")
    pn_norm = pn.meta["norm"]
    a, b = _physionet_part(pn), _sim_part(sim, pn_norm)
    n_pn_groups = len(pn.group_ids)
    inputs = {k: np.concatenate([a["inputs"][k], b["inputs"][k]]) for k in a["inputs"]}
    return Cohort(
        name=NAME,
        modalities=live_row.MODALITIES,
        inputs=inputs,
        present=np.concatenate([a["present"], b["present"]]),
        staleness_h=np.concatenate([a["staleness_h"], b["staleness_h"]]),
        y=np.concatenate([a["y"], b["y"]]),
        group=np.concatenate([pn.group, sim.group + n_pn_groups]).astype(np.int32),
        hour=np.concatenate([pn.hour, sim.hour]).astype(np.float32),
        split=np.concatenate([pn.split, sim.split]).astype(np.uint8),
        group_ids=[*pn.group_ids, *sim.group_ids],
        lookups={
            "cxr": live_row.thumbnails(sim.lookups["cxr"]),
            "report": live_row.report_bag(sim.lookups["report"]),
        },
        meta={
            "version": live_row.COHORT_VERSION,
            "source": "PhysioNet/CinC 2019 training set B (real stays) + icuwatch bedside simulator",
            "description": "PhysioNet stays (vitals, labs) and simulated patients (all five modalities) in the "
            "live student's layout (core.live_row)",
            "real": "PhysioNet rows only",
            "sources": {
                "physionet": {"rows": len(pn), "groups": n_pn_groups, "version": pn.meta.get("version")},
                "sim": {
                    "rows": len(sim),
                    "groups": len(sim.group_ids),
                    "version": sim.meta.get("version"),
                    "population": sim.meta.get("population", "stylised"),
                    "population_version": sim.meta.get("population_version", ""),
                    "simulator_fingerprint": sim.meta.get("simulator_fingerprint"),
                },
            },
            "first_sim_group": n_pn_groups,
            "norm": {
                "vitals": pn_norm["vitals"],
                "labs": pn_norm["labs"],
                "waveforms": copy.deepcopy(live_row.WAVEFORM_NORM),
                "z_clip": float(pn_norm.get("z_clip", Z_CLIP)),
            },
            "labels": {
                "y": "sepsis: PhysioNet SepsisLabel; simulated septic patients from onset - 6 h",
                "deterioration": "simulated deteriorating patients from onset - 6 h; unknown (NaN) on PhysioNet",
            },
        },
        targets={"deterioration": np.concatenate([a["deterioration"], b["deterioration"]])},
    )


def source_of(cohort: Cohort) -> np.ndarray:
    """[N] bool: True on simulated rows."""
    return cohort.group >= int(cohort.meta["first_sim_group"])


def cache_path(sim_patients: int, pn_limit: int | None, cache_dir: str | Path | None = None) -> Path:
    """The cache of this layout, these sources' sizes and the simulated population's version."""
    from icuwatch.fusion.cohorts import sim

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    pn = "all" if pn_limit is None else str(pn_limit)
    return (
        cache_dir / f"{live_row.COHORT_VERSION}-pn{pn}-sim{SIM_POPULATION}-{sim.POPULATION_VERSION}-{sim_patients}.npz"
    )


def load_or_build(
    sim_patients: int = 1000, pn_limit: int | None = None, progress: bool = True, cache_dir: str | Path | None = None
) -> Cohort:
    """The cached live cohort, built from the (cached) PhysioNet and simulator cohorts when missing."""
    from icuwatch.fusion.cohorts import physionet, sim

    def make() -> Cohort:
        return build(
            physionet.load_or_build(limit=pn_limit, progress=progress),
            sim.load_or_build(n_patients=sim_patients, progress=progress, population=SIM_POPULATION),
        )

    return load_or_build_cached(
        cache_path(sim_patients, pn_limit, cache_dir),
        make,
        lambda c: (
            c.meta.get("version") == live_row.COHORT_VERSION
            and c.meta["sources"]["sim"].get("population_version") == sim.POPULATION_VERSION
            and c.meta["sources"]["sim"].get("simulator_fingerprint") == sim.simulator_fingerprint()
        ),
    )
