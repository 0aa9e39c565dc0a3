"""Chest X-ray findings of the ``icu`` population (``sources/simulator/cxr_findings.py``): frequencies,
what the film shows, reports that name exactly those findings in varied wording, determinism, and
stylised films and reports left as they were."""

from __future__ import annotations

import hashlib
import io
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from icuwatch.sources.simulator import cxr
from icuwatch.sources.simulator import cxr_findings as cf
from icuwatch.sources.simulator.cxr_findings import Findings
from icuwatch.sources.simulator.patients import STREAM_CXR, draw_patients
from icuwatch.sources.simulator.simulation import cxr_schedule, study_report

DAYS = 3 * 86400.0
STYLISED_DIGEST = "57e7047473947c0bdeab52f5b2e42c4fff5005a17e8cd70f244bd850e5764de6"
"""Pixels and reports of the stylised films below, from before findings existed."""

_MENTIONS = {
    "atelectasis": r"atelectasis",
    "effusion": r"effusion",
    "edema": r"edema|fluid overload",
    "ett": r"endotracheal|\bet tube|intubation",
    "cvc": r"internal jugular|\bij\b|subclavian|central venous|central line",
    "ngt": r"nasogastric|enteric|\bng tube",
}


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def _film(f: Findings | None, seed: int = 5) -> np.ndarray:
    return _pixels(cxr.render(0.0, "clear", "right", np.random.default_rng(seed), findings=f))


def _mentioned(text: str) -> set[str]:
    """Findings a report names in its positive sentences (negations and removals dropped)."""
    keep = [
        s
        for s in re.split(r"(?<=[.;:])\s+", text.lower())
        if not s.startswith("no ") and not re.search(r"removed|extubation|angles are sharp", s)
    ]
    body = " ".join(keep)
    return {name for name, pattern in _MENTIONS.items() if re.search(pattern, body)}


@pytest.fixture(scope="module")
def icu_studies():
    patients = draw_patients(600, 21, DAYS, 0.35, (600.0, 36 * 3600.0), "sim", "icu")
    return [(p, cxr_schedule(p, DAYS, p.rng(STREAM_CXR))) for p in patients]


def test_stylised_films_and_reports_unchanged():
    h = hashlib.sha256()
    for p in draw_patients(6, 3, DAYS, 0.5, (600.0, 7200.0), "sim", "stylised"):
        for st in cxr_schedule(p, DAYS, p.rng(STREAM_CXR)):
            assert st.findings is None and st.prior_findings is None
            png = cxr.render(st.severity, st.pattern, p.lobe, np.random.default_rng(st.image_seed))
            assert png == cxr.render(
                st.severity, st.pattern, p.lobe, np.random.default_rng(st.image_seed), findings=None
            )
            text = study_report(p, st)
            assert text == cxr.report(st.severity, st.pattern, p.lobe, st.prior_severity)
            h.update(_pixels(png).astype(np.uint8).tobytes())
            h.update(text.encode())
    assert h.hexdigest() == STYLISED_DIGEST


def test_admission_film_frequencies(icu_studies):
    """Shares on the first film against what the docstring states (post-operative: 60 % of SICU)."""
    first = [(p, s[0].findings) for p, s in icu_studies if s]
    post = np.array(["post_op" in p.comorbidities for p, _ in first])
    ckd = np.array(["ckd" in p.comorbidities for p, _ in first])
    has = {n: np.array([n in f.names() for _, f in first]) for n in cf.FINDINGS}
    ett = np.where(post, cf.ETT_POST_OP, cf.ETT_ON_ADMISSION).mean()
    expected = {
        "ett": ett,
        "ngt": ett * cf.NGT_WITH_ETT + (1 - ett) * cf.NGT_ALONE,
        "cvc": np.where(post, cf.CVC_POST_OP, cf.CVC_ON_ADMISSION).mean(),
        "effusion": np.where(ckd, cf.EFFUSION_CKD, cf.EFFUSION_ON_ADMISSION).mean(),
    }
    for name, share in expected.items():
        assert abs(has[name].mean() - share) < 0.06, (name, has[name].mean(), share)
    vent = has["ett"] | post
    assert abs(has["atelectasis"][vent].mean() - cf.ATELECTASIS_VENTILATED) < 0.09
    assert abs(has["atelectasis"][~vent].mean() - cf.ATELECTASIS_ON_ADMISSION) < 0.07
    assert 0.02 < has["edema"].mean() < 0.15


def test_findings_persist_and_change_across_films(icu_studies):
    cvc_kept = effusion_changed = 0
    for _, studies in icu_studies:
        for a, b in zip(studies, studies[1:]):
            assert b.prior_findings == a.findings
            if a.findings.cvc is not None:
                assert b.findings.cvc == a.findings.cvc  # a line stays in
                cvc_kept += 1
            if a.findings.effusion and b.findings.effusion:
                effusion_changed += a.findings.effusion_size != b.findings.effusion_size
    assert cvc_kept > 50 and effusion_changed > 10
    later = [st.findings for p, s in icu_studies if p.condition != "stable" for st in s[1:]]
    assert any("edema" in f.names() for f in later) and any("ett" in f.names() for f in later)


def test_films_without_sepsis_carry_findings(icu_studies):
    """A film, or an opacity on it, no longer tells a septic patient apart."""
    stable = [st.findings for p, s in icu_studies if p.condition == "stable" for st in s]
    assert np.mean([bool(f.names()) for f in stable]) > 0.5
    assert np.mean([bool({"atelectasis", "effusion", "edema"} & set(f.names())) for f in stable]) > 0.3


def test_each_finding_changes_the_image_where_it_is_drawn():
    lungs = cxr.lung_mask() > 0.9
    yy, xx = np.mgrid[0:224, 0:224]
    right_base, left_base = lungs & (yy > 140) & (xx < 112), lungs & (yy > 140) & (xx > 112)
    clear = _film(Findings())
    eff = _film(Findings(effusion="right", effusion_size=0.5))
    assert eff[right_base].mean() > clear[right_base].mean() + 20
    assert abs(eff[left_base].mean() - clear[left_base].mean()) < 2
    atel = _film(Findings(atelectasis="bilateral"))
    assert (
        atel[right_base].mean() > clear[right_base].mean() + 5 and atel[left_base].mean() > clear[left_base].mean() + 5
    )
    edema = _film(Findings(edema=0.8))
    hilum = lungs & (yy > 90) & (yy < 135) & (np.abs(xx - 112) < 40)
    assert edema[hilum].mean() > clear[hilum].mean() + 10

    tubes = _film(Findings(ett_cm=4.0, cvc="right_ij", ngt=True))
    tip = int(cf.ett_tip_row(4.0))
    ridge = tubes[15 : tip - 4, 104:120].max(axis=1) - clear[15 : tip - 4, 104:120].max(axis=1)
    assert (ridge > 20).mean() > 0.9  # a bright tube down the trachea
    below = tubes[tip + 6 : 90, 108:116] - clear[tip + 6 : 90, 108:116]
    assert below.mean() < 30  # and it stops at its tip (the NG tube runs beside it)
    cvc = tubes[60:95, 95:108].max(axis=1) - clear[60:95, 95:108].max(axis=1)
    assert (cvc > 30).mean() > 0.8
    assert (tubes[185:205, 130:165] - clear[185:205, 130:165]).max() > 60  # NG tube tip under the left dome


def test_reports_mention_exactly_the_drawn_findings(icu_studies):
    n = 0
    for p, studies in icu_studies[:250]:
        for st in studies:
            text = study_report(p, st)
            expected = set(st.findings.names())
            got = _mentioned(text)
            if st.pattern == "diffuse":
                got.discard("edema")  # "pulmonary edema versus ARDS": the diffuse pattern's own words
            assert got == expected, (text, expected)
            n += 1
    assert n > 300


def test_wording_varies_between_studies_with_the_same_findings(icu_studies):
    groups: dict[tuple, list[str]] = defaultdict(list)
    for p, studies in icu_studies:
        for st in studies:
            key = (st.findings.names(), st.pattern, st.severity >= 0.15, st.prior_findings is None)
            groups[key].append(study_report(p, st))
    texts = [t for g in groups.values() if len(g) > 1 for t in g]
    dupes = sum(n - 1 for g in groups.values() for n in _counts(g).values() if n > 1)
    assert len(texts) > 300
    assert dupes / len(texts) < 0.2
    assert sum("Impression:" in t for t in texts) / len(texts) > 0.4
    assert 0 < sum("Impression:" in t for t in texts) < len(texts)


def _counts(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return out


def test_deterministic_for_a_seed(icu_studies):
    p = next(p for p, s in icu_studies if len(s) >= 2 and s[0].findings.names())
    again = cxr_schedule(p, DAYS, p.rng(STREAM_CXR))
    first = next(s for q, s in icu_studies if q is p)
    assert again == first
    for st in again:
        a = cxr.render(st.severity, st.pattern, p.lobe, np.random.default_rng(st.image_seed), findings=st.findings)
        b = cxr.render(st.severity, st.pattern, p.lobe, np.random.default_rng(st.image_seed), findings=st.findings)
        assert a == b and study_report(p, st) == study_report(p, st)
