"""Chest X-ray findings of their own for the ``icu`` population: basal atelectasis, pleural effusion,
pulmonary edema and lines and tubes, how they come and go over a stay, how they look on a film, and
reports that describe them in varied wording.

The stylised population's films carry only the severity-tied opacity (``cxr.render``); here a film
of a stable patient can show atelectasis, an effusion, edema or a central line, so that "a film was
taken" or "the film shows an opacity" no longer tells a septic patient apart.

Frequencies per ``icu`` patient (illustrative judgments from the portable ICU film, not fitted):

* **endotracheal tube** (``ETT_*``): 30 % ventilated on admission, 45 % of post-operative surgical
  patients; extubated after 12-96 h (post-operative: 4-16 h). Intubated later at treatment:
  respiratory failure 60 %, sepsis or haemorrhage not responding to treatment 30 % (2-6 h after).
* **nasogastric tube** (``NGT_*``): placed with 70 % of intubations, out 0-24 h after extubation;
  8 % of other patients have one from admission.
* **central venous catheter** (``CVC_*``): 45 % on admission (post-operative 65 %); 50 % of septic or
  bleeding patients without one get one when treated. Right internal jugular 60 %, subclavian 25 %,
  left internal jugular 15 %; tip in the lower SVC or at the cavoatrial junction. Never removed
  within a stay (days).
* **basal atelectasis** (``ATELECTASIS_*``): 25 % on admission, 45 % when ventilated or
  post-operative; 40 % of later intubations bring it. Bilateral 45 %, left 30 %, right 25 %; lasts
  an exponential time of mean 48 h.
* **pleural effusion** (``EFFUSION_*``): 18 % on admission (chronic kidney disease 35 %); 20 % of
  fluid-resuscitated patients (sepsis, haemorrhage) develop one 12-36 h after treatment. Its size
  drifts by a drawn rate per day (grows or shrinks, gone below ``EFFUSION_MIN``).
* **pulmonary edema** (``EDEMA_*``): 6 % on admission (chronic kidney disease 20 %: fluid
  overload); 25 % of fluid-resuscitated patients 4-16 h after treatment, rising to a drawn grade over
  12 h and resolving over 36 h. Not drawn for respiratory failure, whose diffuse pattern is already
  reported as edema versus ARDS.

Findings live in :class:`Findings` (one film) and :class:`FindingsCourse` (one stay); the drawing is
deterministic in the patient (``course_for``), the wording in the study's seed (``describe``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from .patients import STREAM_CXR

Side = Literal["right", "left", "bilateral"]
CvcSite = Literal["right_ij", "left_ij", "right_subclavian"]
CvcTip = Literal["svc", "cavoatrial"]
FINDINGS: tuple[str, ...] = ("atelectasis", "effusion", "edema", "ett", "cvc", "ngt")

ETT_ON_ADMISSION, ETT_POST_OP = 0.30, 0.45
ETT_EXTUBATION_H, ETT_EXTUBATION_POST_OP_H = (12.0, 96.0), (4.0, 16.0)
ETT_AT_TREATMENT = {"respiratory_failure": 0.60, "sepsis": 0.30, "hemorrhage": 0.30}
"""Share intubated when treated (sepsis, haemorrhage: non-responders only, ``ETT_NON_RESPONDER_H`` later)."""
ETT_NON_RESPONDER_H = (2.0, 6.0)
"""A non-responder is intubated this long after treatment, once the failure to respond shows (at a
fixed hour after treatment the tube told responders from non-responders before their courses did)."""
NGT_WITH_ETT, NGT_ALONE = 0.70, 0.08
CVC_ON_ADMISSION, CVC_POST_OP, CVC_AT_TREATMENT = 0.45, 0.65, 0.50
CVC_SITES = {"right_ij": 0.60, "right_subclavian": 0.25, "left_ij": 0.15}
ATELECTASIS_ON_ADMISSION, ATELECTASIS_VENTILATED, ATELECTASIS_AT_INTUBATION = 0.25, 0.45, 0.40
ATELECTASIS_SIDES = {"bilateral": 0.45, "left": 0.30, "right": 0.25}
ATELECTASIS_MEAN_H = 48.0
EFFUSION_ON_ADMISSION, EFFUSION_CKD, EFFUSION_AFTER_FLUIDS = 0.18, 0.35, 0.20
EFFUSION_SIDES = {"right": 0.40, "bilateral": 0.35, "left": 0.25}
EFFUSION_DRIFT_PER_DAY = 0.25
EFFUSION_MIN = 0.08
EDEMA_ON_ADMISSION, EDEMA_CKD, EDEMA_AFTER_FLUIDS = 0.06, 0.20, 0.25
EDEMA_RISE_H, EDEMA_RESOLVE_H = 12.0, 36.0

_H = 3600.0
_CARINA = (112.0, 92.0)
_PX_PER_CM = 6.0


@dataclass(frozen=True)
class Findings:
    """What one film shows besides the septic/diffuse opacity. Sizes and grades are in [0, 1]."""

    atelectasis: Side | None = None
    effusion: Side | None = None
    effusion_size: float = 0.0
    edema: float = 0.0
    ett_cm: float | None = None
    """Endotracheal tube tip height above the carina (cm); None: not intubated."""
    cvc: CvcSite | None = None
    cvc_tip: CvcTip = "svc"
    ngt: bool = False

    def names(self) -> tuple[str, ...]:
        """Present findings, in ``FINDINGS`` order."""
        present = {
            "atelectasis": self.atelectasis is not None,
            "effusion": self.effusion is not None,
            "edema": self.edema > 0.0,
            "ett": self.ett_cm is not None,
            "cvc": self.cvc is not None,
            "ngt": self.ngt,
        }
        return tuple(n for n in FINDINGS if present[n])


@dataclass(frozen=True)
class FindingsCourse:
    """One stay's findings over time (seconds after the simulation start)."""

    ett: tuple[tuple[float, float, float], ...] = ()
    """(start, end, tip cm above the carina) per intubation."""
    ngt: tuple[tuple[float, float], ...] = ()
    cvc: tuple[float, CvcSite, CvcTip] | None = None
    atelectasis: tuple[tuple[float, float, Side], ...] = ()
    effusion: tuple[float, float, float, Side] | None = None
    """(start, size at start, size change per day, side)."""
    edema: tuple[float, float] | None = None
    """(start, peak grade)."""

    def at(self, t: float) -> Findings:
        ett = next((cm for a, b, cm in self.ett if a <= t < b), None)
        ngt = any(a <= t < b for a, b in self.ngt)
        cvc = self.cvc if self.cvc is not None and t >= self.cvc[0] else None
        atel = next((side for a, b, side in self.atelectasis if a <= t < b), None)
        eff_side, eff_size = None, 0.0
        if self.effusion is not None and t >= self.effusion[0]:
            start, size0, rate, side = self.effusion
            size = min(1.0, size0 + rate * (t - start) / 86400.0)
            if size >= EFFUSION_MIN:
                eff_side, eff_size = side, round(size, 3)
        edema = 0.0
        if self.edema is not None and t >= self.edema[0]:
            dt_h = (t - self.edema[0]) / _H
            shape = dt_h / EDEMA_RISE_H if dt_h < EDEMA_RISE_H else 1.0 - (dt_h - EDEMA_RISE_H) / EDEMA_RESOLVE_H
            edema = round(self.edema[1] * max(shape, 0.0), 3) if shape > 0.15 else 0.0
        return Findings(
            atelectasis=atel,
            effusion=eff_side,
            effusion_size=eff_size,
            edema=edema,
            ett_cm=ett,
            cvc=None if cvc is None else cvc[1],
            cvc_tip="svc" if cvc is None else cvc[2],
            ngt=ngt,
        )


def _pick(rng: np.random.Generator, shares: dict):
    names = list(shares)
    return names[int(rng.choice(len(names), p=list(shares.values())))]


def course_for(p, duration_s: float) -> FindingsCourse:
    """The findings course of ``icu`` patient ``p`` (``patients.PatientSpec``), from its own generator
    (spawn key (index, STREAM_CXR, 1)), so that the study schedule's draws stay untouched."""
    rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(p.index, STREAM_CXR, 1)))
    post_op = "post_op" in p.comorbidities
    ckd = "ckd" in p.comorbidities
    end = duration_s + 1.0
    treated = None if p.onset_s is None or p.treated_after_s is None else p.onset_s + p.treated_after_s
    fluids = treated is not None and p.condition in ("sepsis", "hemorrhage")
    u = rng.random(16)

    ett: list[tuple[float, float, float]] = []
    ngt: list[tuple[float, float]] = []
    atel: list[tuple[float, float, Side]] = []

    def intubate(start: float, stop: float) -> None:
        cm = 1.0 if rng.random() < 0.07 else float(np.round(rng.uniform(2.5, 6.0), 1))
        ett.append((start, stop, cm))
        if rng.random() < NGT_WITH_ETT:
            ngt.append((start, min(end, stop + rng.uniform(0.0, 24.0) * _H)))

    if u[0] < (ETT_POST_OP if post_op else ETT_ON_ADMISSION):
        lo, hi = ETT_EXTUBATION_POST_OP_H if post_op else ETT_EXTUBATION_H
        intubate(-_H, rng.uniform(lo, hi) * _H)
    elif u[1] < NGT_ALONE:
        ngt.append((-_H, end))
    if treated is not None and u[2] < ETT_AT_TREATMENT.get(p.condition, 0.0):
        at = treated + (0.0 if p.condition == "respiratory_failure" else rng.uniform(*ETT_NON_RESPONDER_H) * _H)
        if (p.condition == "respiratory_failure" or not p.responds) and not any(a <= at < b for a, b, _ in ett):
            intubate(at, end)
            if rng.random() < ATELECTASIS_AT_INTUBATION:
                atel.append((at, at + rng.exponential(ATELECTASIS_MEAN_H) * _H, _pick(rng, ATELECTASIS_SIDES)))

    cvc = None
    if u[3] < (CVC_POST_OP if post_op else CVC_ON_ADMISSION):
        cvc = (-_H, _pick(rng, CVC_SITES), "svc" if u[4] < 0.7 else "cavoatrial")
    elif fluids and u[5] < CVC_AT_TREATMENT:
        cvc = (float(treated), _pick(rng, CVC_SITES), "svc" if u[4] < 0.7 else "cavoatrial")

    ventilated = bool(ett) and ett[0][0] < 0
    if u[6] < (ATELECTASIS_VENTILATED if ventilated or post_op else ATELECTASIS_ON_ADMISSION):
        atel.insert(0, (-_H, rng.exponential(ATELECTASIS_MEAN_H) * _H, _pick(rng, ATELECTASIS_SIDES)))

    effusion = None
    rate = float(rng.normal(0.0, EFFUSION_DRIFT_PER_DAY))
    if u[7] < (EFFUSION_CKD if ckd else EFFUSION_ON_ADMISSION):
        effusion = (-_H, float(rng.uniform(0.15, 0.7)), rate, _pick(rng, EFFUSION_SIDES))
    elif fluids and u[8] < EFFUSION_AFTER_FLUIDS:
        start = float(treated) + rng.uniform(12.0, 36.0) * _H
        effusion = (start, float(rng.uniform(0.15, 0.5)), abs(rate), _pick(rng, EFFUSION_SIDES))

    edema = None
    if p.condition != "respiratory_failure":
        peak = float(rng.uniform(0.3, 0.9))
        if u[9] < (EDEMA_CKD if ckd else EDEMA_ON_ADMISSION):
            edema = (-EDEMA_RISE_H * _H * float(rng.uniform(0.3, 1.5)), peak)
        elif fluids and u[10] < EDEMA_AFTER_FLUIDS:
            edema = (float(treated) + rng.uniform(4.0, 16.0) * _H, peak)

    return FindingsCourse(tuple(ett), tuple(ngt), cvc, tuple(atel), effusion, edema)


def film_findings(rng: np.random.Generator, lung_disease: bool = False) -> Findings:
    """One film's findings drawn on their own, at the admission frequencies above (a film of a
    random ICU patient, no stay around it): training and test films for the joint X-ray–report
    space (``fusion.joint_space.simulate_studies``). ``lung_disease``: the film already shows a
    diffuse opacity, so no edema is drawn (as for respiratory failure in :func:`course_for`)."""
    u = rng.random(8)
    ett = None
    if u[0] < ETT_ON_ADMISSION:
        ett = 1.0 if rng.random() < 0.07 else float(np.round(rng.uniform(2.5, 6.0), 1))
    ngt = bool(u[1] < (NGT_WITH_ETT if ett is not None else NGT_ALONE))
    cvc = _pick(rng, CVC_SITES) if u[2] < CVC_ON_ADMISSION else None
    tip: CvcTip = "svc" if u[3] < 0.7 else "cavoatrial"
    atel_share = ATELECTASIS_VENTILATED if ett is not None else ATELECTASIS_ON_ADMISSION
    atel = _pick(rng, ATELECTASIS_SIDES) if u[4] < atel_share else None
    effusion = _pick(rng, EFFUSION_SIDES) if u[5] < EFFUSION_ON_ADMISSION else None
    size = round(float(rng.uniform(0.15, 0.7)), 3) if effusion else 0.0
    edema = round(float(rng.uniform(0.3, 0.9)), 3) if not lung_disease and u[6] < EDEMA_ON_ADMISSION else 0.0
    return Findings(atel, effusion, size, edema, ett, cvc, tip, ngt)


def prior_film_findings(f: Findings, rng: np.random.Generator) -> Findings:
    """The findings of the film before ``f`` (a day or so earlier): devices and an effusion mostly
    already there, atelectasis and edema sometimes not yet, a device sometimes only placed since."""
    u = rng.random(6)
    effusion = f.effusion if u[1] < 0.8 else None
    return Findings(
        atelectasis=f.atelectasis if u[0] < 0.7 else None,
        effusion=effusion,
        effusion_size=round(float(np.clip(f.effusion_size + rng.normal(0.0, 0.1), 0.1, 1.0)), 3) if effusion else 0.0,
        edema=round(f.edema * float(rng.uniform(0.5, 1.2)), 3) if u[2] < 0.7 else 0.0,
        ett_cm=f.ett_cm if u[3] < 0.85 else None,
        cvc=f.cvc if u[4] < 0.85 else None,
        cvc_tip=f.cvc_tip,
        ngt=f.ngt and u[5] < 0.85,
    )


# ------------------------------------------------------------------------------------ drawing


@lru_cache(maxsize=1)
def _geometry() -> dict[str, np.ndarray]:
    """Grids and finding-independent maps, computed once (the anatomy of ``cxr._anatomy``)."""
    size = 224
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dome = np.where(xx < 112, 176 - 0.007 * (xx - 70) ** 2, 182 - 0.007 * (xx - 154) ** 2)
    right = (xx < 112).astype(float)
    lateral = np.clip((np.abs(xx - 112) - 30) / 60, 0, 1)
    hila = np.maximum(
        np.exp(-0.5 * (((xx - 86) / 26) ** 2 + ((yy - 112) / 38) ** 2)),
        np.exp(-0.5 * (((xx - 140) / 24) ** 2 + ((yy - 116) / 36) ** 2)),
    )
    basal = np.clip((yy - 100) / 70, 0, 1)
    return {"yy": yy, "xx": xx, "dome": dome, "right": right, "lateral": lateral, "haze": hila + 0.35 * basal}


def _sides(side: str, g: dict[str, np.ndarray]) -> np.ndarray:
    return {"right": g["right"], "left": 1.0 - g["right"], "bilateral": np.ones_like(g["right"])}[side]


def _line_paths(f: Findings, dx: float, dy: float) -> list[list[tuple[float, float]]]:
    cx, cy = _CARINA
    paths = []
    if f.ett_cm is not None:
        tip = cy - f.ett_cm * _PX_PER_CM
        paths.append([(109.0, 0.0), (111.0, 30.0), (112.0, tip)])
    if f.ngt:
        paths.append([(116.0, 0.0), (115.0, 60.0), (117.0, 120.0), (126.0, 170.0), (142.0, 193.0), (156.0, 199.0)])
    if f.cvc is not None:
        tip = 100.0 if f.cvc_tip == "svc" else 116.0
        paths.append(
            {
                "right_ij": [(86.0, 0.0), (95.0, 30.0), (101.0, 56.0), (103.0, tip)],
                "left_ij": [(140.0, 0.0), (131.0, 34.0), (120.0, 56.0), (106.0, 66.0), (103.0, tip)],
                "right_subclavian": [(28.0, 50.0), (62.0, 50.0), (90.0, 54.0), (101.0, 64.0), (103.0, tip)],
            }[f.cvc]
        )
    return [[(x + dx, y + dy) for x, y in path] for path in paths]


def paint(img: np.ndarray, mask: np.ndarray, f: Findings, rng: np.random.Generator) -> np.ndarray:
    """``img`` (float, [0, 1]) with ``f`` drawn in place; ``mask``: the soft lung-field mask.
    ``rng`` jitters a film's positioning, so serial films of one patient differ a little."""
    g = _geometry()
    yy, dome = g["yy"], g["dome"]
    if f.edema > 0.0:
        img += (0.52 - img) * np.clip(0.6 * f.edema * g["haze"], 0, 1) * mask
    if f.atelectasis is not None:
        lift = rng.uniform(7.0, 14.0)
        tilt = rng.uniform(-0.08, 0.08)
        band = np.exp(-0.5 * ((yy - (dome - lift + tilt * (g["xx"] - 112))) / rng.uniform(2.0, 3.2)) ** 2)
        haze = 0.25 * np.clip((yy - dome + 28) / 28, 0, 1)
        img += (0.58 - img) * np.clip(0.9 * band + haze, 0, 1) * mask * _sides(f.atelectasis, g)
    if f.effusion is not None:
        height = 8.0 + 50.0 * f.effusion_size
        top = dome - height * (0.55 + 0.65 * g["lateral"])
        fluid = np.clip((yy - top) / 5.0, 0, 1)
        wide = np.clip(mask * 1.6, 0, 1)
        img += (0.56 - img) * 0.9 * fluid * wide * _sides(f.effusion, g)
    paths = _line_paths(f, *rng.normal(0.0, 1.5, 2))
    if paths:
        layer = Image.new("L", img.shape[::-1])
        draw = ImageDraw.Draw(layer)
        for path in paths:
            draw.line(path, fill=255, width=2, joint="curve")
        lines = gaussian_filter(np.asarray(layer, dtype=float) / 255.0, 0.6)
        img += (0.97 - img) * 0.85 * lines
    return img


# ------------------------------------------------------------------------------------ reports

_CVC_NAMES = {
    "right_ij": ("right internal jugular", "right IJ"),
    "left_ij": ("left internal jugular", "left IJ"),
    "right_subclavian": ("right subclavian", "right subclavian"),
}
_SIDE_ADJ = {"right": ("right", "right"), "left": ("left", "left"), "bilateral": ("bilateral", "both")}


def _size_word(size: float) -> str:
    return "small" if size < 0.4 else "moderate" if size < 0.75 else "large"


def _grade_word(grade: float) -> str:
    return "mild" if grade < 0.45 else "moderate" if grade < 0.75 else "severe"


def _choose(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _tube_sentences(f: Findings, prior: Findings | None, rng: np.random.Generator) -> list[str]:
    out = []
    new = prior is not None
    if f.ett_cm is not None:
        cm = f"{f.ett_cm:g} cm"
        if f.ett_cm < 2.0:
            out.append(
                _choose(
                    rng,
                    [
                        f"Endotracheal tube tip is low, {cm} above the carina; recommend withdrawal by 2 cm.",
                        f"The ET tube sits low, about {cm} from the carina, and should be pulled back.",
                    ],
                )
            )
        else:
            s = _choose(
                rng,
                [
                    f"Endotracheal tube tip about {cm} above the carina.",
                    f"ET tube in satisfactory position, tip {cm} above the carina.",
                    f"The endotracheal tube terminates approximately {cm} above the carina.",
                    f"Endotracheal tube in good position, {cm} above the carina.",
                ],
            )
            if new and prior.ett_cm is None:
                s = "Interval intubation. " + s
            out.append(s)
    elif new and prior.ett_cm is not None:
        out.append(_choose(rng, ["Interval extubation.", "The endotracheal tube has been removed."]))
    if f.cvc is not None:
        long, short = _CVC_NAMES[f.cvc]
        tip = "the lower SVC" if f.cvc_tip == "svc" else "the cavoatrial junction"
        if new and prior.cvc is None:
            options = [
                f"Interval placement of a {long} central venous catheter, tip at {tip}.",
                f"New {short} central line with tip in {tip}.",
            ]
        else:
            options = [
                f"{long.capitalize()} central venous catheter with tip in {tip}.",
                f"{short[0].upper() + short[1:]} central line terminating at {tip}.",
                f"The {long} line tip projects over {tip}.",
                f"{long.capitalize()} catheter, tip at {tip}.",
            ]
        out.append(_choose(rng, options))
    if f.ngt:
        out.append(
            _choose(
                rng,
                [
                    "Nasogastric tube courses below the diaphragm, tip in the stomach.",
                    "Enteric tube tip projects over the stomach.",
                    "NG tube tip below the left hemidiaphragm.",
                    "The nasogastric tube tip is in the stomach.",
                ],
            )
        )
    elif new and prior.ngt:
        out.append("Nasogastric tube removed.")
    return out


def _lung_sentences(f: Findings, prior: Findings | None, rng: np.random.Generator) -> list[str]:
    out = []
    if f.edema > 0.0:
        g = _grade_word(f.edema)
        s = _choose(
            rng,
            [
                f"{g.capitalize()} pulmonary edema.",
                f"Bilateral perihilar haziness, consistent with {g} interstitial edema.",
                f"Vascular congestion with {g} perihilar haze, likely fluid overload.",
                f"{g.capitalize()} bilateral perihilar opacities, most likely edema.",
            ],
        )
        if prior is not None and prior.edema > 0.0:
            if f.edema > prior.edema + 0.15:
                s += " Worse than before."
            elif f.edema < prior.edema - 0.15:
                s += _choose(rng, [" Improving.", " Improved compared with the prior study."])
        out.append(s)
    if f.atelectasis is not None:
        side, both = _SIDE_ADJ[f.atelectasis]
        if f.atelectasis == "bilateral":
            options = [
                "Bibasilar atelectasis.",
                "Bibasal subsegmental atelectasis.",
                "Linear opacities at both bases, likely atelectasis.",
                "Bibasilar opacities, likely atelectasis; superimposed infection cannot be excluded.",
            ]
        else:
            options = [
                f"{side.capitalize()} basilar atelectasis.",
                f"Linear atelectasis at the {side} base.",
                f"Subsegmental atelectasis in the {side} lower zone.",
                f"{side.capitalize()} basal opacity, likely atelectasis.",
                f"Plate-like atelectasis at the {both} lung base.",
            ]
        out.append(_choose(rng, options))
    if f.effusion is not None:
        size = _size_word(f.effusion_size)
        if f.effusion == "bilateral":
            s = _choose(
                rng,
                [
                    f"{size.capitalize()} bilateral pleural effusions.",
                    f"Blunting of both costophrenic angles, {size} bilateral effusions.",
                    f"{size.capitalize()} bilateral effusions with meniscus.",
                ],
            )
        else:
            side = f.effusion
            s = _choose(
                rng,
                [
                    f"{size.capitalize()} {side} pleural effusion.",
                    f"Blunting of the {side} costophrenic angle, consistent with a {size} effusion.",
                    f"{size.capitalize()} {side} effusion with a meniscus.",
                    f"Layering {size} {side} pleural effusion.",
                ],
            )
        if prior is not None and prior.effusion is not None:
            if f.effusion_size > prior.effusion_size + 0.1:
                s += _choose(rng, [" Increased since the prior study.", " Larger than before."])
            elif f.effusion_size < prior.effusion_size - 0.1:
                s += _choose(rng, [" Decreased since the prior study.", " Smaller than before."])
            else:
                s += _choose(rng, [" Unchanged.", " Stable.", ""])
        out.append(s)
    return out


def describe(
    opacity: str | None,
    opacity_change: str | None,
    f: Findings,
    prior: Findings | None,
    seed: int,
) -> str:
    """A report of a film with findings ``f``, wording drawn from ``seed`` (the study's image seed).

    ``opacity``: the septic/diffuse opacity sentence chosen by the caller (None: none seen);
    ``opacity_change``: its comparison with the prior study. Negated findings sit in sentences of
    their own starting with "No" (or the costophrenic-angle sentence), so a reader can tell a
    mention from a negation by the sentence alone.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    head = _choose(
        rng,
        [
            "Portable AP chest radiograph.",
            "AP portable chest.",
            "Single frontal view of the chest.",
            "Portable semi-upright AP view of the chest.",
            "Chest, single AP view.",
        ],
    )
    if prior is not None and rng.random() < 0.5:
        head += " " + _choose(rng, ["Comparison: prior study.", "Compared with the prior film."])
    heart = _choose(
        rng,
        [
            "Heart size is normal.",
            "Cardiomediastinal silhouette within normal limits.",
            "Normal heart size.",
            "",
        ],
    )
    tubes = _tube_sentences(f, prior, rng)
    if tubes and rng.random() < 0.4:
        tubes = ["Lines and tubes: " + " ".join(tubes)]
    lungs = _lung_sentences(f, prior, rng)
    if opacity is not None:
        lungs.insert(0, opacity + ("" if opacity_change is None else " " + opacity_change))
    rng.shuffle(lungs)
    negatives = []
    if f.effusion is None:
        negatives.append(_choose(rng, ["No pleural effusion.", "No effusion.", "The costophrenic angles are sharp."]))
    negatives.append(_choose(rng, ["No pneumothorax.", "No pneumothorax is seen.", ""]))
    if opacity is None and f.atelectasis is None and f.edema == 0.0:
        lungs.append(_choose(rng, ["Lungs are clear.", "No focal consolidation.", "The lungs are clear."]))
    body = [*tubes, heart, *lungs, *negatives] if rng.random() < 0.6 else [heart, *lungs, *negatives, *tubes]
    text = " ".join(s for s in [head, *body] if s)
    if rng.random() < 0.6:
        text += " Impression: " + _impression(opacity is not None, f, rng)
    return text


def _impression(opacity: bool, f: Findings, rng: np.random.Generator) -> str:
    parts = []
    if opacity:
        parts.append("Airspace disease as above.")
    if f.edema > 0.0:
        parts.append(_choose(rng, ["Pulmonary edema.", "Fluid overload."]))
    if f.effusion is not None:
        parts.append(_choose(rng, ["Pleural effusion.", "Effusion as described."]))
    if f.atelectasis is not None:
        parts.append("Atelectasis.")
    if f.ett_cm is not None or f.cvc is not None or f.ngt:
        parts.append(_choose(rng, ["Support devices as above.", "Lines and tubes as described."]))
    if not parts:
        return _choose(rng, ["No acute cardiopulmonary process.", "No acute disease."])
    return " ".join(parts)


def opacity_sentence(severity: float, pattern: str, lobe: str, seed: int) -> str | None:
    """The septic (pneumonia) or diffuse opacity in varied wording; None below what a reader sees.
    Extent words and "pneumonia" / "edema versus ARDS" stay as in ``cxr.report``."""
    if pattern == "clear" or severity < 0.15:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    extent = "mild" if severity < 0.4 else "moderate" if severity < 0.7 else "extensive"
    side = "right" if lobe == "right" else "left"
    if pattern == "pneumonia":
        if severity < 0.45:
            return _choose(
                rng,
                [
                    f"{extent.capitalize()} patchy airspace opacity in the {side} lower lobe, concerning for"
                    " pneumonia.",
                    f"Patchy {side} lower lobe airspace opacity ({extent}), likely pneumonia.",
                    f"{extent.capitalize()} {side} lower lobe consolidation, compatible with pneumonia.",
                ],
            )
        return _choose(
            rng,
            [
                f"{extent.capitalize()} bilateral patchy airspace opacities, most confluent in the {side} lower lobe,"
                " in keeping with multifocal pneumonia.",
                f"Multifocal pneumonia: {extent} bilateral consolidation, worst in the {side} lower lobe.",
                f"{extent.capitalize()} bilateral airspace opacities, densest at the {side} base, likely multifocal"
                " pneumonia.",
            ],
        )
    return _choose(
        rng,
        [
            f"{extent.capitalize()} bilateral diffuse hazy and airspace opacities, basal and perihilar predominant;"
            " pulmonary edema versus ARDS.",
            f"Diffuse bilateral airspace opacities ({extent}), edema versus ARDS in the appropriate clinical setting.",
        ],
    )


def opacity_change(severity: float, prior_severity: float | None, seed: int) -> str | None:
    if prior_severity is None or abs(severity - prior_severity) <= 0.1:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
    if severity > prior_severity:
        return _choose(rng, ["Opacities have increased compared with the prior study.", "Worse than before."])
    return _choose(rng, ["Opacities have decreased compared with the prior study.", "Improving since the prior film."])


def ett_tip_row(cm: float) -> float:
    """Image row of an endotracheal tube tip ``cm`` above the carina (for tests and readers)."""
    return _CARINA[1] - cm * _PX_PER_CM


def as_dict(f: Findings) -> dict:
    """JSON-ready findings (cohort metadata, ground truth)."""
    return {
        "findings": list(f.names()),
        "atelectasis": f.atelectasis,
        "effusion": f.effusion,
        "effusion_size": f.effusion_size,
        "edema": f.edema,
        "ett_cm": f.ett_cm,
        "cvc": f.cvc,
        "cvc_tip": f.cvc_tip if f.cvc else None,
        "ngt": f.ngt,
    }
