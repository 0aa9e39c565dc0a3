"""Cohort builders: ``physionet`` (real PhysioNet 2019 stays: vitals, labs), ``sim`` (the
simulator's multimodal patients: vitals, waveform features, labs, chest X-rays, reports), ``sim_icu``
(the same from the ``icu`` population: fitted to real stays, a real unit's prevalence) and ``live``."""

from __future__ import annotations

from icuwatch.fusion.cohorts.base import Cohort

COHORTS = ("physionet", "sim", "sim_icu", "live")


def load(name: str, limit: int | None = None, progress: bool = True) -> Cohort:
    """The cached cohort (built on first use). ``limit``: PhysioNet stays / simulated patients."""
    if name == "physionet":
        from icuwatch.fusion.cohorts import physionet

        return physionet.load_or_build(limit=limit, progress=progress)
    if name == "sim":
        from icuwatch.fusion.cohorts import sim

        return sim.load_or_build(n_patients=limit or 1000, progress=progress)
    if name == "sim_icu":
        from icuwatch.fusion.cohorts import sim

        return sim.load_or_build(n_patients=limit or 1000, progress=progress, population="icu")
    if name == "live":
        from icuwatch.fusion.cohorts import live

        return live.load_or_build(sim_patients=1000, pn_limit=limit, progress=progress)
    raise ValueError(f"unknown cohort {name!r}; choose from {', '.join(COHORTS)}")
