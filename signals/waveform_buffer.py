"""Rolling per-patient, per-signal buffer of waveform chunks (the last ``window_s`` seconds).

Chunks come from ``icu.waveforms`` with at-least-once delivery, so they may be duplicated or out of
order, and the stream may have gaps. The buffer keeps chunks (not samples) in time order: an add is a
bisect over a handful of chunk start times plus one small array copy, with no per-sample Python work.
:meth:`WaveformBuffer.contiguous` concatenates the longest gap-free run that ends at the newest chunk
(a gap is never bridged) and caches it until the next change.
"""

from __future__ import annotations

import bisect

import numpy as np


class WaveformBuffer:
    """The last ``window_s`` seconds of one signal of one patient.

    Two chunks are contiguous when the later one starts within ``tolerance`` sample periods of the end
    of the earlier one (default half a sample); anything else (a gap, or an overlap larger than that) breaks
    the run. A chunk starting within ``tolerance`` samples of a stored chunk's start is a duplicate.
    A change of ``fs`` (a different device) clears the buffer.
    """

    __slots__ = ("window_s", "tolerance", "fs", "_starts", "_chunks", "_cache")

    def __init__(self, window_s: float = 10.0, tolerance: float = 0.5) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self.window_s = float(window_s)
        self.tolerance = float(tolerance)
        self.fs: float | None = None
        self._starts: list[float] = []
        self._chunks: list[np.ndarray] = []
        self._cache: tuple[float, np.ndarray] | None = None

    def __len__(self) -> int:
        """Number of chunks held."""
        return len(self._chunks)

    @property
    def newest_end(self) -> float | None:
        """Time just after the last sample of the newest chunk, or None when empty."""
        if not self._chunks:
            return None
        assert self.fs is not None
        return self._starts[-1] + len(self._chunks[-1]) / self.fs

    def clear(self) -> None:
        self._starts.clear()
        self._chunks.clear()
        self._cache = None
        self.fs = None

    def add(self, event_time: float, fs: float, samples) -> bool:
        """Store one chunk whose sample 0 was taken at ``event_time``.

        Returns False when the chunk was not stored: a duplicate of a stored chunk, empty, or already
        older than the window. Out-of-order chunks are put in time order.
        """
        arr = np.asarray(samples, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            return False
        fs = float(fs)
        if self.fs is None or abs(fs - self.fs) > 1e-9 * fs:
            self.clear()
            self.fs = fs
        t0 = float(event_time)
        half = self.tolerance / fs
        starts = self._starts
        i = bisect.bisect_left(starts, t0 - half)
        if i < len(starts) and starts[i] <= t0 + half:
            return False  # duplicate (same event_time)
        end = t0 + arr.size / fs
        newest_end = self.newest_end
        if newest_end is not None and end <= newest_end - self.window_s:
            return False  # wholly outside the window already
        starts.insert(i, t0)
        self._chunks.insert(i, arr)
        self._cache = None
        self._evict()
        return True

    def _evict(self) -> None:
        fs, newest_end = self.fs, self.newest_end
        if fs is None or newest_end is None:
            return
        horizon = newest_end - self.window_s
        n = 0
        while n < len(self._chunks) and self._starts[n] + len(self._chunks[n]) / fs <= horizon:
            n += 1
        if n:
            del self._starts[:n]
            del self._chunks[:n]

    def contiguous(self) -> tuple[float, np.ndarray]:
        """``(t0, samples)``: the longest gap-free run ending at the newest chunk, cut to ``window_s``.

        ``t0`` is the time of ``samples[0]``. Empty buffer: ``(nan, empty array)``. The array is
        shared with the cache; treat it as read-only.
        """
        if self._cache is not None:
            return self._cache
        if not self._chunks:
            return float("nan"), np.empty(0)
        fs = self.fs
        assert fs is not None
        half = self.tolerance / fs
        j = len(self._chunks) - 1
        while j > 0:
            prev_end = self._starts[j - 1] + len(self._chunks[j - 1]) / fs
            if abs(self._starts[j] - prev_end) > half:
                break
            j -= 1
        run = self._chunks[j:]
        data = run[0] if len(run) == 1 else np.concatenate(run)
        keep = int(round(self.window_s * fs))
        t0 = self._starts[j]
        if data.size > keep:
            # the window is counted back from the newest sample
            t0 += (data.size - keep) / fs
            data = data[-keep:]
        self._cache = (t0, data)
        return self._cache

    def duration_s(self) -> float:
        """Seconds covered by :meth:`contiguous`."""
        if self.fs is None:
            return 0.0
        return self.contiguous()[1].size / self.fs
