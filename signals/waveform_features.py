"""Waveform features for the stream worker: ECG heart rate, PPG pulse rate, respiration rate.

ECG beats come from ``wfdb.processing.XQRS`` (chosen over ``gqrs_detect`` by measurement on the shared
records: no missed beats on 15 leads of s0010_re where gqrs missed 5 %, at a similar cost of ~10-20 ms
per 10-s 250-Hz window). XQRS fails to learn at high sampling rates (0 beats on s0010_re at 1000 Hz),
so signals above :data:`MAX_DETECT_FS` are resampled to :data:`DETECT_FS` first and the peak indices
mapped back. :func:`detect_r_peaks` (whole records) and :func:`ecg_heart_rate` (windows) share that
one code path. PPG and respiration use ``scipy.signal`` band-pass filters and ``find_peaks``.

Signal-quality guard: a bedside feed is often not a signal at all (a lead or probe off reads a flat
line, amplifier overload pins it at an ADC rail, movement adds noise the size of the pulse). A rate
computed from such a window is confidently wrong (a QRS detector finds motion "beats"; a flat
window's few noise peaks make 30 or 200 bpm), and the worker would store it like any other value.
So :func:`ecg_heart_rate`, :func:`ppg_pulse_rate` and :func:`resp_rate` return None (missing, as for
a window too short) when :func:`window_quality` finds the window flat or clipped, or when fewer than
:data:`MIN_PLAUSIBLE_FRACTION` of its beat intervals are plausible (:func:`rr_plausible_fraction`:
atrial fibrillation's irregular intervals, a coefficient of variation up to ~0.25, stay above it).
Movement within the PPG's pulse band that keeps intervals regular is not caught (an open limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np
from scipy import signal as sps
from scipy.ndimage import maximum_filter1d
from wfdb import processing as wproc
from wfdb.processing import qrs as wqrs

from icuwatch.signals.waveform_buffer import WaveformBuffer

__all__ = [
    "WaveformBuffer",
    "WaveformFeatures",
    "detect_r_peaks",
    "ecg_heart_rate",
    "features_from_buffers",
    "find_local_peaks",
    "ppg_pulse_rate",
    "ppg_peaks",
    "resp_rate",
    "rr_plausible_fraction",
    "window_quality",
]

DETECT_FS = 250.0
MAX_DETECT_FS = 300.0
MAX_BPM = 220.0
MIN_BPM = 30.0
MIN_ECG_S = 4.0  # XQRS learns its thresholds from the first seconds
MIN_PPG_S = 4.0
MIN_RESP_S = 10.0
MIN_BEATS = 4  # at least 3 RR intervals for a median
FLAT_RUN_S = 0.2
"""Identical consecutive samples for this long are a flat line: a physiological signal does not
hold a value to the last bit for 0.2 s, a lead-off trace or a saturated amplifier does. (Coarsely
quantised real records do hold clipped R peaks for up to ~0.12 s: MIMIC 3000003, p000878.)"""
MAX_FLAT_FRACTION = 0.5
"""A window flat for up to half its length keeps its rate: the rest holds enough beats, and a
mid-range flat stretch makes no false ones (MIMIC 3000003's V lead: 2.7 s flat in 8 s, HR right)."""
MAX_CLIPPED_FRACTION = 0.1
"""Flat runs at the window's maximum or minimum (pinned at a rail) count from 10 % on: the steps
onto and off a rail are the size of a QRS and read as beats."""
MIN_PLAUSIBLE_FRACTION = 0.7
MIN_INTERVALS_FOR_PLAUSIBILITY = 5
"""Below this many beat intervals the fraction is not applied: with 3 intervals one ectopic or
missed beat (a good, slow window) would already fall under 0.7."""


def find_local_peaks(sig, radius: int) -> np.ndarray:
    """``wfdb.processing.find_local_peaks`` with the same result, vectorised.

    wfdb's version takes Python's ``max`` over a slice at every sample: ~80 % of XQRS's time (10 ms
    per 10-s window), most of the worker's CPU at 1,000 beds. A sample is a candidate when it equals
    the maximum of ``sig[i - radius : i + radius]`` (cut at the ends), and after a peak wfdb skips
    ``radius`` samples, so peaks are the candidates taken greedily at least ``radius`` apart.
    Installed into ``wfdb.processing.qrs`` below; tests compare it with wfdb's own on random and
    tied signals.
    """
    sig = np.asarray(sig, dtype=np.float64)
    if np.min(sig) == np.max(sig):
        return np.empty(0)
    if radius < 1:
        return _wfdb_find_local_peaks(sig, radius)
    window_max = maximum_filter1d(sig, size=2 * radius, mode="constant", cval=-np.inf)
    peaks: list[int] = []
    next_allowed = 0
    for i in np.flatnonzero(sig == window_max).tolist():
        if i >= next_allowed:
            peaks.append(i)
            next_allowed = i + radius
    return np.array(peaks)


_wfdb_find_local_peaks = wproc.peaks.find_local_peaks
wqrs.find_local_peaks = find_local_peaks


def _clean(x, fs: float) -> np.ndarray:
    """1-D float64, NaNs linearly interpolated (all NaN: empty)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    bad = np.isnan(x)
    if bad.any():
        if bad.all():
            return np.empty(0)
        idx = np.arange(x.size)
        x = x.copy()
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def window_quality(samples, fs: float) -> str | None:
    """Why a window is not a usable signal (``"flat"``, ``"clipped"``), or None when it looks like one.

    Runs of identical values at least :data:`FLAT_RUN_S` long are flat; ``clipped``: more than
    :data:`MAX_CLIPPED_FRACTION` of the samples are in flat runs at the window's maximum or minimum;
    ``flat``: more than :data:`MAX_FLAT_FRACTION` in flat runs anywhere. NaNs (gaps) are dropped
    first; an empty or constant window is ``flat``.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0 or np.ptp(x) == 0:
        return "flat"
    same = np.concatenate([[False], np.diff(x) == 0, [False]])
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    starts, runs = edges[::2], edges[1::2] - edges[::2] + 1  # first sample and length of each run
    long = runs >= FLAT_RUN_S * fs
    at_rail = (x[starts] == x.max()) | (x[starts] == x.min())
    if runs[long & at_rail].sum() > MAX_CLIPPED_FRACTION * x.size:
        return "clipped"
    if runs[long].sum() > MAX_FLAT_FRACTION * x.size:
        return "flat"
    return None


def detect_r_peaks(signal, fs: float) -> np.ndarray:
    """R-peak sample indices (into ``signal``, at ``fs``) found by wfdb's XQRS; works on whole records."""
    x = _clean(signal, fs)
    fs = float(fs)
    if x.size < int(fs) or np.ptp(x) == 0:
        return np.empty(0, dtype=np.int64)
    scale = 1.0
    if fs > MAX_DETECT_FS:
        ratio = Fraction(DETECT_FS / fs).limit_denominator(1000)
        x = sps.resample_poly(x, ratio.numerator, ratio.denominator)
        scale = fs / (fs * ratio.numerator / ratio.denominator)
        dfs = fs / scale
    else:
        dfs = fs
    xq = wproc.XQRS(sig=x, fs=dfs)
    xq.detect(verbose=False)
    peaks = np.asarray(xq.qrs_inds, dtype=np.int64)
    if scale != 1.0 and peaks.size:
        peaks = np.minimum(np.round(peaks * scale).astype(np.int64), len(signal) - 1)
    return peaks


def _rate_from_peaks(peaks: np.ndarray, fs: float) -> float | None:
    if peaks.size < MIN_BEATS:
        return None
    plausible = rr_plausible_fraction(peaks, fs)
    if plausible is not None and peaks.size > MIN_INTERVALS_FOR_PLAUSIBILITY and plausible < MIN_PLAUSIBLE_FRACTION:
        return None
    rate = 60.0 * fs / float(np.median(np.diff(peaks)))
    return rate if MIN_BPM <= rate <= MAX_BPM * 1.1 else None


def ecg_heart_rate(samples, fs: float) -> tuple[float | None, np.ndarray]:
    """``(heart rate in bpm from the median RR interval, R-peak indices)``.

    The rate is None when the window is shorter than :data:`MIN_ECG_S`, fails
    :func:`window_quality` (no peaks are searched then), has fewer than :data:`MIN_BEATS` beats or too
    few plausible R-R intervals, or gives a rate outside 30-242 bpm.
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.size < MIN_ECG_S * fs or window_quality(x, fs) is not None:
        return None, np.empty(0, dtype=np.int64)
    peaks = detect_r_peaks(x, fs)
    return _rate_from_peaks(peaks, fs), peaks


def rr_plausible_fraction(peaks: np.ndarray, fs: float) -> float | None:
    """Fraction of RR intervals within 30-220 bpm and within 50 % of the median RR (a crude SQI)."""
    if peaks.size < 3:
        return None
    rr = np.diff(peaks) / fs
    med = np.median(rr)
    ok = (rr >= 60.0 / MAX_BPM) & (rr <= 60.0 / MIN_BPM) & (np.abs(rr - med) <= 0.5 * med)
    return float(ok.mean())


def _bandpass(x: np.ndarray, fs: float, lo: float, hi: float, order: int = 2) -> np.ndarray:
    hi = min(hi, 0.45 * fs)
    sos = sps.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")
    return sps.sosfiltfilt(sos, x - np.mean(x))


def ppg_peaks(samples, fs: float) -> np.ndarray:
    """Systolic peak indices of a PPG: band-pass 0.5-8 Hz, ``find_peaks`` with a 220-bpm refractory
    distance, keeping peaks at least 0.4 times as prominent as the 75th-percentile one (drops diastolic
    waves, tolerates a few artefacts)."""
    x = _clean(samples, fs)
    if x.size < MIN_PPG_S * fs or np.ptp(x) == 0:
        return np.empty(0, dtype=np.int64)
    y = _bandpass(x, fs, 0.5, 8.0)
    distance = max(1, int(fs * 60.0 / MAX_BPM))
    peaks, props = sps.find_peaks(y, distance=distance, prominence=0.1 * np.std(y))
    if peaks.size:
        # drop diastolic / dicrotic waves: keep peaks at least 0.4 x the 75th-percentile prominence
        prom = props["prominences"]
        peaks = peaks[prom >= 0.4 * np.percentile(prom, 75)]
    return peaks


def ppg_pulse_rate(samples, fs: float) -> float | None:
    """Pulse rate (bpm) from the median peak-to-peak interval, or None (also when the window fails
    :func:`window_quality` or too few intervals are plausible)."""
    if window_quality(samples, fs) is not None:
        return None
    return _rate_from_peaks(ppg_peaks(samples, fs), fs)


def resp_rate(samples, fs: float) -> float | None:
    """Breaths per minute from peaks of the 0.1-1 Hz band-passed signal (max 60/min), or None.

    Needs at least :data:`MIN_RESP_S` seconds; a 10-s window holds only 2-5 breaths, so the worker
    should give respiration a longer buffer (30 s or more).
    """
    x = _clean(samples, fs)
    if x.size < MIN_RESP_S * fs or window_quality(samples, fs) is not None:  # gaps filled by _clean are not flat
        return None
    y = _bandpass(x, fs, 0.1, 1.0)
    peaks, _ = sps.find_peaks(y, distance=max(1, int(fs * 1.0)), prominence=0.5 * np.std(y))
    if peaks.size < 3:
        return None
    rate = 60.0 * fs / float(np.median(np.diff(peaks)))
    return rate if 4.0 <= rate <= 60.0 else None


@dataclass(frozen=True)
class WaveformFeatures:
    ecg_hr: float | None = None
    ppg_pr: float | None = None
    resp_rr: float | None = None
    ecg_n_beats: int = 0
    ecg_sqi: float | None = None
    """Fraction of plausible RR intervals (see :func:`rr_plausible_fraction`)."""
    ecg_quality_ok: bool = False
    """ecg_hr present, >= MIN_BEATS beats and ecg_sqi >= 0.8."""
    hr_pr_agree: bool | None = None
    """ECG HR and PPG PR within 10 bpm (None unless both present)."""
    ecg_s: float = 0.0
    ppg_s: float = 0.0
    resp_s: float = 0.0
    """Seconds of contiguous signal each feature was computed on."""

    def as_dict(self) -> dict:
        return asdict(self)


def features_from_buffers(
    ecg: WaveformBuffer | None = None,
    ppg: WaveformBuffer | None = None,
    resp: WaveformBuffer | None = None,
) -> WaveformFeatures:
    """Compute all features on the contiguous tail of each buffer given (any may be None or empty)."""
    out: dict = {}
    if ecg is not None and ecg.fs is not None:
        _, x = ecg.contiguous()
        hr, peaks = ecg_heart_rate(x, ecg.fs)
        sqi = rr_plausible_fraction(peaks, ecg.fs)
        out.update(
            ecg_hr=hr,
            ecg_n_beats=int(peaks.size),
            ecg_sqi=sqi,
            ecg_quality_ok=bool(hr is not None and sqi is not None and sqi >= 0.8),
            ecg_s=x.size / ecg.fs,
        )
    if ppg is not None and ppg.fs is not None:
        _, x = ppg.contiguous()
        out.update(ppg_pr=ppg_pulse_rate(x, ppg.fs), ppg_s=x.size / ppg.fs)
    if resp is not None and resp.fs is not None:
        _, x = resp.contiguous()
        out.update(resp_rr=resp_rate(x, resp.fs), resp_s=x.size / resp.fs)
    if out.get("ecg_hr") is not None and out.get("ppg_pr") is not None:
        out["hr_pr_agree"] = abs(out["ecg_hr"] - out["ppg_pr"]) <= 10.0
    return WaveformFeatures(**out)
