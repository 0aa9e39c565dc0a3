"""Batched scoring through Triton with an in-process rule fallback.

Triton is called over gRPC with a timeout. When a call fails the scorer answers with the rule
scores (same numbers the first Triton model gives), counts it, logs the transition once, and tries
Triton again after ``triton_retry_s``: no crash, no lost score.

Per-modality contributions (``CONTRIBUTIONS``, layout in :mod:`icuwatch.core.features`) are
requested only when the served model declares that output (its metadata, read once per
connection); a model without it, or a response without it, gives ``contributions`` None. The
fallback computes them with the same code as the first Triton model. :class:`StudentScorer`
computes its sepsis contributions itself (leave-one-modality-out, in the same Triton call).

Model version: every Triton response names the version that answered it
(``ModelInferResponse.model_version``); a scored batch carries it (``model_version``), so when
``icuwatch models promote`` or ``rollback`` switches the served version the next batch's scores say
so, with no extra round trip and no worker restart. The fallback's batches have none.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from icuwatch.core import features, rules, schemas
from icuwatch.core.live_row import to_wire_uint8
from icuwatch.core.settings import Settings

log = logging.getLogger(__name__)

OUTPUTS = ("DETERIORATION_RISK", "SEPSIS_RISK", "NEWS2", "QSOFA")
OUTPUT_KEYS = ("deterioration_risk", "sepsis_risk", "news2", "qsofa")

Outputs = dict[str, Any]
"""A scored batch: a float array per ``OUTPUT_KEYS`` name, ``contributions`` (an array of
``features.CONTRIBUTIONS_SHAPE`` per row, or None when the model gives none), and ``model_version``
(the Triton model version that answered, a string; None for the fallback or when not known)."""


class TritonScorer:
    def __init__(self, settings: Settings) -> None:
        import tritonclient.grpc.aio as grpcaio

        self._grpc = grpcaio
        self.settings = settings
        self.model = settings.triton_model
        self.client = self._connect()
        self._meta: dict | None = None
        """The served model's metadata (inputs, outputs, their types), read at the first call and
        again after a reconnect or a version change; None: not read yet."""
        self.served_version: str | None = None
        """The model version that answered the last Triton call (None: none yet)."""
        self.down_until = 0.0
        self.counts = {
            "triton_batches": 0,
            "triton_rows": 0,
            "fallback_batches": 0,
            "fallback_rows": 0,
            "triton_errors": 0,
        }

    @property
    def model_name(self) -> str:
        """The model named on scores that came through Triton."""
        return self.model

    async def score(
        self, x: np.ndarray, rows: dict[str, np.ndarray] | None = None
    ) -> tuple[Outputs, schemas.ScoreSource]:
        """Score a [batch, features] matrix (and, for a cohort-row model, the matching batch of cohort
        rows); returns (outputs, 'triton' | 'fallback')."""
        if time.monotonic() >= self.down_until:
            try:
                out = await self._score_triton(x, rows)
            except Exception as exc:  # any transport or server error means: fall back
                self.counts["triton_errors"] += 1
                await self._reconnect()
                if self.down_until == 0.0:
                    log.warning("Triton unavailable (%s); scoring with rules in-process", type(exc).__name__)
                self.down_until = time.monotonic() + self.settings.triton_retry_s
            else:
                if self.down_until:
                    log.info("Triton is back; scoring through Triton again")
                self.down_until = 0.0
                self.counts["triton_batches"] += 1
                self.counts["triton_rows"] += len(x)
                return out, "triton"
        self.counts["fallback_batches"] += 1
        self.counts["fallback_rows"] += len(x)
        ruled: Outputs = {**rules.score_explained(x), "model_version": None}
        return ruled, "fallback"

    def _answered_by(self, version: str | None) -> None:
        """Note the version that answered; when it changed (a promotion or rollback on the server),
        say so once and read the model's outputs again at the next call."""
        if version is None or version == self.served_version:
            return
        if self.served_version is not None:
            log.info("Triton model %s now answers at version %s (was %s)", self.model, version, self.served_version)
            self._meta = None
        self.served_version = version

    async def _score_triton(self, x: np.ndarray, rows: dict[str, np.ndarray] | None) -> Outputs:
        return await self._infer(x)

    def _connect(self):
        # Short reconnect backoff: gRPC's default grows to two minutes after the server went away.
        return self._grpc.InferenceServerClient(
            self.settings.triton_url,
            channel_args=[("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 1000)],
        )

    async def _reconnect(self) -> None:
        self._meta = None  # the server (and its model version) may change
        try:
            await self.client.close()
        except Exception:
            pass
        self.client = self._connect()

    async def _metadata(self) -> dict:
        if self._meta is None:
            self._meta = await self.client.get_model_metadata(
                self.model, as_json=True, client_timeout=self.settings.triton_timeout_s
            )
        return self._meta

    async def _outputs(self) -> set[str]:
        return {o["name"] for o in (await self._metadata()).get("outputs", [])}

    async def _infer(self, x: np.ndarray) -> Outputs:
        explained = features.CONTRIBUTIONS_OUTPUT in await self._outputs()
        inp = self._grpc.InferInput("FEATURES", list(x.shape), "FP32")
        inp.set_data_from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        names = OUTPUTS + ((features.CONTRIBUTIONS_OUTPUT,) if explained else ())
        result = await self.client.infer(
            self.model,
            [inp],
            outputs=[self._grpc.InferRequestedOutput(n) for n in names],
            client_timeout=self.settings.triton_timeout_s,
        )
        out: Outputs = {}
        for name, key in zip(OUTPUTS, OUTPUT_KEYS):
            arr = result.as_numpy(name)
            if arr is None or arr.shape[0] != x.shape[0]:
                raise RuntimeError(f"Triton returned no/short {name}")
            out[key] = arr.reshape(-1)
        out["contributions"] = _contributions(
            result.as_numpy(features.CONTRIBUTIONS_OUTPUT) if explained else None, len(x)
        )
        out["model_version"] = response_version(result)
        self._answered_by(out["model_version"])
        return out

    async def close(self) -> None:
        await self.client.close()


def response_version(result: Any) -> str | None:
    """The model version named in a Triton inference result (``InferResult.get_response()``'s
    ``model_version``); None when the result does not say."""
    get_response = getattr(result, "get_response", None)
    if get_response is None:
        return None
    version = getattr(get_response(), "model_version", None)
    return str(version) if version not in (None, "") else None


_warned_shapes: set[tuple[int, ...]] = set()


def _contributions(arr: np.ndarray | None, n: int) -> np.ndarray | None:
    """The model's ``CONTRIBUTIONS`` if it has the agreed layout, else None (logged once per
    shape): an explanation the worker cannot read is left out rather than failing the score."""
    if arr is None:
        return None
    if arr.shape != (n, *features.CONTRIBUTIONS_SHAPE):
        if arr.shape[1:] not in _warned_shapes:
            _warned_shapes.add(arr.shape[1:])
            log.warning(
                "Triton CONTRIBUTIONS shaped %s, expected %s; scores go without contributions",
                list(arr.shape),
                [n, *features.CONTRIBUTIONS_SHAPE],
            )
        return None
    return arr


PN_MODALITIES = ("vitals", "labs")
"""Modalities of an exported PhysioNet model (``streams.student_row.MODALITIES``)."""
PROBABILITY = "PROBABILITY"
STUDENT_MAX_BATCH = 1024
"""Rows per Triton request to an exported fusion model: its ``max_batch_size``
(``serving.export.MAX_BATCH_SIZE``, not imported here: it pulls in torch). A larger batch is
sent as several requests."""


def _from_export(info: dict) -> dict | None:
    if not info.get("norm"):
        return None  # exported before export.json carried the normalisation: use the model card
    return {
        "norm": info["norm"],
        "heads": list(info.get("heads") or ["sepsis"]),
        "thresholds": info.get("thresholds") or {"sepsis": info.get("threshold")},
        "source": "export.json",
    }


def _from_card(card: dict) -> dict:
    return {
        "norm": card["data"]["meta"]["norm"],
        "heads": list(card.get("heads") or ["sepsis"]),
        "thresholds": card.get("thresholds") or {"sepsis": card.get("threshold")},
        "source": "model_card.json",
    }


def served_model_info(settings: Settings) -> dict:
    """What the worker needs to know about ``settings.scoring_model``: ``{"norm": the input
    normalisation, "heads": risks in the order of its PROBABILITY columns, "thresholds": per risk the
    alert threshold its card chose, "source", "dir": where that was read}``. From
    ``scoring_model_dir`` (its ``export.json`` or ``model_card.json``), else the highest version's
    ``export.json`` in the served repositories, else ``<state_dir>/models/<name with _ as ->/model_card.json``."""
    import json

    from icuwatch.core.settings import model_repositories

    name = settings.scoring_model
    candidates = []
    if settings.scoring_model_dir is not None:
        candidates.append(settings.scoring_model_dir)
    else:
        for repo in model_repositories(settings):
            model = repo / name
            if model.is_dir():
                versions = sorted((int(v.name) for v in model.iterdir() if v.name.isdigit()), reverse=True)
                candidates += [model / str(v) for v in versions]
        candidates.append(settings.state_dir / "models" / name.replace("_", "-"))
    for directory in candidates:
        if (directory / "export.json").is_file():
            info = _from_export(json.loads((directory / "export.json").read_text()))
            if info is not None:
                return {**info, "dir": str(directory)}
        if (directory / "model_card.json").is_file():
            return {**_from_card(json.loads((directory / "model_card.json").read_text())), "dir": str(directory)}
    raise FileNotFoundError(
        f"scoring model {name}: no export.json or model_card.json in {', '.join(map(str, candidates))}"
        " (ICUWATCH_SCORING_MODEL names a model; ICUWATCH_SCORING_MODEL= scores with the rules alone)"
    )


def load_norm(settings: Settings) -> dict:
    """The normalisation of ``settings.scoring_model`` (:func:`served_model_info`)."""
    return served_model_info(settings)["norm"]


def version_card_thresholds(read_dir: Path, version: str) -> dict | None:
    """The alert thresholds in ``export.json`` of ``version`` beside ``read_dir`` (the version
    directory whose card the worker read at start); None when that is the same version, or when the
    card cannot be read (logged: the start's thresholds then apply)."""
    if read_dir.name == version or not read_dir.name.isdigit() or not version.isdigit():
        return None
    path = read_dir.parent / version / "export.json"
    try:
        thresholds = json.loads(path.read_text())["thresholds"]
    except (OSError, ValueError, KeyError) as exc:
        log.warning("thresholds of version %s not read (%s): the start's apply", version, type(exc).__name__)
        return None
    return thresholds if isinstance(thresholds, dict) else None


def is_live(info: dict) -> bool:
    """Whether a served model reads the live layout (five modalities, ``streams.live_row``) rather
    than the PhysioNet cohort's (``streams.student_row``)."""
    return "waveforms" in info["norm"]


class StudentScorer(TritonScorer):
    """Risks from a fusion model in Triton (``settings.scoring_model``), the rest from the rules.

    Each batch: the rule scores of the feature rows (deterioration risk, sepsis risk, NEWS2, qSOFA,
    their contributions) are computed here, and the cohort rows (``streams.live_row.row`` for the
    live student, ``streams.student_row.cohort_row`` for a PhysioNet model) go to Triton in one call.
    Its ``PROBABILITY`` columns replace the rule risks it answers (the live student: sepsis and
    deterioration; a PhysioNet model: sepsis); NEWS2 and qSOFA stay the rules'.

    The contributions of a risk the model answers are its own, leave-one-out like the rules': the
    same call carries, per row and explanation modality (``core.features.MODALITIES``; an X-ray is
    its image and its report together) that the row has, a copy of the row without it
    (``student_row.leave_one_out``: inputs zeroed, ``present`` False, as the cohort gives an absent
    modality), so a batch of ``n`` rows sends up to ``5n`` (requests of at most
    ``STUDENT_MAX_BATCH`` rows). Contribution = p(row) - p(row without it), clipped to [-1, 1]; 0 for
    a modality the row lacks or the model does not read. When Triton fails the batch is the rules'
    alone (``source`` fallback), with the same retry as :class:`TritonScorer`.
    """

    def __init__(self, settings: Settings, info: dict | None = None) -> None:
        from icuwatch.core.live_row import FEATURE_MODALITY_GROUPS
        from icuwatch.core.live_row import MODALITIES as LIVE_MODALITIES

        super().__init__(settings)
        self.model = settings.scoring_model
        self.info = info if info is not None else served_model_info(settings)
        self.heads: tuple[str, ...] = tuple(self.info["heads"])
        self.modalities: tuple[str, ...] = LIVE_MODALITIES if is_live(self.info) else PN_MODALITIES
        self.input_keys = (*self.modalities, "static", "present", "staleness_h")
        """The Triton inputs, in lower case, in ``serving.export.batch_keys`` order."""
        read = {fm: tuple(m for m in FEATURE_MODALITY_GROUPS[fm] if m in self.modalities) for fm in features.MODALITIES}
        self.groups = {fm: g for fm, g in read.items() if g}
        """Per explanation modality, the model's modalities it stands for (only those it reads)."""

    @property
    def model_name(self) -> str:
        return self.model if "deterioration" in self.heads else f"{self.model}+rules"

    async def _score_triton(self, x: np.ndarray, rows: dict[str, np.ndarray] | None) -> Outputs:
        if rows is None:
            raise ValueError(f"{self.model} scores cohort rows; the worker sent none")
        from icuwatch.streams.student_row import leave_one_out

        n = len(x)
        if len(rows["present"]) != n:
            raise ValueError(f"{n} feature rows but {len(rows['present'])} cohort rows")
        out: Outputs = dict(rules.score_explained(x))
        extended, without = leave_one_out(rows, self.modalities, list(self.groups.values()))
        p, version = await self._infer_student(extended)
        if p.shape[1] != len(self.heads):
            raise RuntimeError(f"{self.model} answered {p.shape[1]} risks, its card names {len(self.heads)}")
        contributions = np.array(out["contributions"], dtype=np.float64)
        for r, risk in enumerate(self.heads):
            full = p[:n, r]
            out[f"{risk}_risk"] = full
            k = features.CONTRIBUTION_RISKS.index(risk)
            contributions[:, k, :] = 0.0  # the rules' explain another model
            for g, modality in enumerate(self.groups):
                has = without[:, g] >= 0
                delta = np.where(has, full - p[np.where(has, without[:, g], 0), r], 0.0)
                contributions[:, k, features.MODALITIES.index(modality)] = np.clip(delta, -1.0, 1.0)
        out["contributions"] = contributions
        out["model_version"] = version
        self._answered_by(version)
        return out

    async def _infer_student(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, str | None]:
        """``PROBABILITY`` [rows, risks] of every row of ``batch`` (float64, clipped to [0, 1]), in requests of at
        most ``STUDENT_MAX_BATCH`` rows sent together, and the model version that answered them.

        Requests answered by two versions (the server switched versions between them) are sent
        again once, so one batch is one version's."""
        n = len(batch["present"])
        for _ in range(2):
            parts = await asyncio.gather(
                *(
                    self._infer_student_part({k: v[i : i + STUDENT_MAX_BATCH] for k, v in batch.items()})
                    for i in range(0, n, STUDENT_MAX_BATCH)
                )
            )
            versions = {version for _, version in parts}
            if len(versions) <= 1:
                break
        else:
            raise RuntimeError(f"Triton answered one batch with versions {sorted(map(str, versions))} of {self.model}")
        p = np.concatenate([q for q, _ in parts]) if parts else np.zeros((0, len(self.heads)))
        return p, next(iter(versions), None)

    async def _infer_student_part(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, str | None]:
        n = len(batch["present"])
        declared = {i["name"]: i["datatype"] for i in (await self._metadata()).get("inputs", [])}
        inputs = []
        for key in self.input_keys:
            dtype = declared.get(key.upper()) or ("BOOL" if key == "present" else "FP32")
            arr = to_wire_uint8(key, batch[key]) if dtype == "UINT8" else np.ascontiguousarray(batch[key])
            inp = self._grpc.InferInput(key.upper(), list(arr.shape), dtype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        result = await self.client.infer(
            self.model,
            inputs,
            outputs=[self._grpc.InferRequestedOutput(PROBABILITY)],
            client_timeout=self.settings.triton_timeout_s,
        )
        arr = result.as_numpy(PROBABILITY)
        if arr is None or arr.shape[0] != n:
            raise RuntimeError(f"Triton returned no/short {PROBABILITY}")
        p = arr.reshape(n, -1).astype(np.float64)
        if not np.isfinite(p).all():
            raise RuntimeError(f"Triton returned a non-finite {PROBABILITY}")
        return np.clip(p, 0.0, 1.0), response_version(result)
