"""The receiving clock of the live listeners (HL7, DICOM): which event times they accept."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TimeWindow:
    """Event times a live listener accepts: at most ``max_future_s`` ahead of its clock ``now`` (clock
    skew between systems) and ``max_age_s`` behind it (0: that side unchecked)."""

    now: float
    max_future_s: float
    max_age_s: float

    def problem(self, t: float) -> str | None:
        """Why ``t`` is outside the window, or None."""
        if self.max_future_s and t - self.now > self.max_future_s:
            return f"{span(t - self.now)} ahead of the receiving clock (at most {span(self.max_future_s)})"
        if self.max_age_s and self.now - t > self.max_age_s:
            return f"{span(self.now - t)} older than the receiving clock (at most {span(self.max_age_s)})"
        return None


def span(s: float) -> str:
    """Seconds as "40 s", "2.5 h" or "30.0 d"."""
    return f"{s:.0f} s" if s < 3600 else f"{s / 3600:.1f} h" if s < 86400 else f"{s / 86400:.1f} d"
