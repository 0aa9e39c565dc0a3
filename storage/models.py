"""Database tables: patients, scores, alerts, the alerts' audit log and API tokens.

There are deliberately no foreign keys to ``patients``: messages are delivered out of order (a score
or an alert may arrive before the patient's ADT admit), so the repository creates a minimal patient
row when it first sees a patient instead of letting the database reject the row.

All timestamps are timezone-aware UTC ``datetime`` values (see :class:`UTCDateTime`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ALERT_STATES = ("raised", "acknowledged", "resolved")
OPEN_ALERT_STATES = ("raised", "acknowledged")
"""States of an open episode: at most one open alert per patient and kind is stored."""
ALERT_ACTIONS = ("raised", "acknowledged", "resolved", "escalated", "suppressed")
UNIT_MODES = ("silent", "live")
TOKEN_ROLES = ("nurse", "physician", "engineer", "admin")

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Fixed constraint names, so the hand-written migrations and the models name things alike."""


class UTCDateTime(TypeDecorator[datetime]):
    """``TIMESTAMP WITH TIME ZONE`` that always hands back aware UTC datetimes.

    SQLite has no time zone support and returns naive values; PostgreSQL returns them in the
    session's time zone. Both are normalised to UTC here, and naive input is rejected rather
    than guessed at.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Optional[datetime], dialect: Dialect) -> Optional[datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


class Patient(Base):
    """Latest known ADT state of a patient.

    ``updated_at`` is the *event time* of the newest ADT message applied (None for a stub row made
    because a score or alert arrived first); it is the watermark that stops a late, older ADT event
    from overwriting newer state.
    """

    __tablename__ = "patients"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit: Mapped[Optional[str]] = mapped_column(String(64))
    bed: Mapped[Optional[str]] = mapped_column(String(64))
    age: Mapped[Optional[float]] = mapped_column(Float)
    sex: Mapped[Optional[str]] = mapped_column(String(1))
    admitted_at: Mapped[Optional[datetime]]
    discharged_at: Mapped[Optional[datetime]]
    updated_at: Mapped[Optional[datetime]]

    def __repr__(self) -> str:
        return f"Patient({self.patient_id!r}, unit={self.unit!r}, bed={self.bed!r})"


class DataFeed(Base):
    """When a patient's data of one modality last arrived, written by the worker's liveness check
    (``streams/liveness.py``) every ``liveness_check_s``: the board and the patient page measure
    silence against now from it, not from the last score."""

    __tablename__ = "data_feeds"

    patient_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    modality: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_received_at: Mapped[datetime]
    """Wall clock: the Kafka timestamp of the newest record of this modality the worker took."""
    last_event_time: Mapped[Optional[datetime]]
    """Event time of the newest data of this modality in the patient's state."""

    def __repr__(self) -> str:
        return f"DataFeed({self.patient_id!r}, {self.modality!r})"


class Score(Base):
    """One risk score. Unique per (patient, model, event time) so redelivery cannot duplicate; a
    later revision of the same score replaces the stored values."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("patient_id", "model", "event_time"),
        Index("ix_scores_patient_id_event_time", "patient_id", "event_time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[Optional[str]] = mapped_column(String(64))
    """The version of ``model`` that gave the score (``schemas.Score.model_version``); NULL for the
    fallback rules, a message without it, or a score stored before migration 0007."""
    source: Mapped[str] = mapped_column(String(16))
    deterioration_risk: Mapped[float] = mapped_column(Float)
    sepsis_risk: Mapped[float] = mapped_column(Float)
    news2: Mapped[int] = mapped_column(SmallInteger)
    qsofa: Mapped[int] = mapped_column(SmallInteger)
    staleness: Mapped[dict[str, Any]]
    """Per modality: seconds since its last message, or None if never seen."""
    trigger: Mapped[str] = mapped_column(String(32))
    scored_at: Mapped[datetime]
    revision: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    """The highest revision received is kept (see ``schemas.Score.revision``)."""
    contributions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON(none_as_null=True))
    """Per risk kind, per modality (``schemas.Score.contributions``); NULL when the model gave
    none or the score predates migration 0004."""

    def __repr__(self) -> str:
        return f"Score({self.patient_id!r}, {self.model!r}, {self.event_time.isoformat()})"


class Alert(Base):
    """An alert episode: raised -> acknowledged -> resolved, or raised -> resolved.

    Every state change (and every escalation) also writes an :class:`AlertEvent` in the same
    transaction and sets ``updated_at``, the wall-clock time the row last changed here, which the
    API uses to stream changes.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("state IN ('raised', 'acknowledged', 'resolved')", name="state"),
        Index("ix_alerts_state_event_time", "state", "event_time"),
        Index("ix_alerts_patient_id_event_time", "patient_id", "event_time"),
        Index("ix_alerts_updated_at", "updated_at"),
    )

    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    risk: Mapped[float] = mapped_column(Float)
    news2: Mapped[int] = mapped_column(SmallInteger)
    qsofa: Mapped[int] = mapped_column(SmallInteger)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[Optional[str]] = mapped_column(String(64))
    """The version of ``model`` whose score opened the episode (``schemas.Alert.model_version``);
    NULL when unknown (fallback rules, data liveness, before migration 0007)."""
    source: Mapped[str] = mapped_column(String(16))
    episode_start: Mapped[datetime]
    event_time: Mapped[datetime]
    raised_at: Mapped[datetime]
    """Wall-clock time the worker raised it."""
    stored_at: Mapped[datetime]
    """Wall-clock time it was first written here."""
    state: Mapped[str] = mapped_column(String(16), default="raised")
    acknowledged_by: Mapped[Optional[str]] = mapped_column(String(128))
    acknowledged_at: Mapped[Optional[datetime]]
    ack_comment: Mapped[Optional[str]] = mapped_column(Text)
    resolved_at: Mapped[Optional[datetime]]
    resolved_by: Mapped[Optional[str]] = mapped_column(String(128))
    """Who resolved it; None when the system did (or before migration 0003)."""
    escalation_level: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    """How many times it was escalated for staying unacknowledged."""
    escalated_at: Mapped[Optional[datetime]]
    updated_at: Mapped[datetime]
    """Wall-clock time this row last changed (insert, acknowledge, resolve, escalate)."""
    contributions: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON(none_as_null=True))
    """Per modality, the contributions to this alert's kind of risk from the score that opened it
    (``schemas.Alert.contributions``); NULL when it had none."""
    silent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Raised while the patient's unit ran silent (``storage/units.py``): recorded, but kept from
    the nurses' board, live stream, escalation and FHIR; an open one is shown when the unit goes live."""
    shown_at: Mapped[Optional[datetime]]
    """When a silent alert was shown to the nurses (its unit went live); escalation counts from it.
    NULL for an alert shown from the start."""

    def __repr__(self) -> str:
        return f"Alert({self.alert_id!r}, {self.kind!r}, state={self.state!r})"


class AlertEvent(Base):
    """Audit log of the alerts: one row per raise, acknowledgement, resolution, escalation, and per
    alert not stored because an episode of the same patient and kind was still open ('suppressed',
    recorded against that open alert; ``detail["suppressed_alert_id"]`` names the one dropped).

    No foreign key, like the other tables; rows are only ever inserted.
    """

    __tablename__ = "alert_events"
    __table_args__ = (
        CheckConstraint(
            "action IN ('raised', 'acknowledged', 'resolved', 'escalated', 'suppressed')",
            name="action",
        ),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[datetime]
    """When it happened: the acknowledgement/resolution/escalation time, the raise time, or for
    'suppressed' the wall-clock time the dropped alert reached the database."""
    actor: Mapped[str] = mapped_column(String(128))
    """Who: the user for acknowledgements and resolutions, 'system' otherwise."""
    action: Mapped[str] = mapped_column(String(16))
    detail: Mapped[dict[str, Any]]

    def __repr__(self) -> str:
        return f"AlertEvent({self.alert_id!r}, {self.action!r}, by={self.actor!r})"


class ApiToken(Base):
    """A bearer token of the API. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("role IN ('nurse', 'physician', 'engineer', 'admin')", name="role"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[Optional[datetime]]
    expires_at: Mapped[Optional[datetime]]
    """None: never expires (tokens from before migration 0005, or a lifetime of 0)."""

    def __repr__(self) -> str:
        return f"ApiToken({self.user!r}, {self.role!r}, revoked={self.revoked_at is not None})"


class ShadowScore(Base):
    """A score of the shadow model (``Settings.shadow_model``), from the same batch as the live
    score of that patient and time. Kept apart from ``scores`` so no nurse-facing query can show it.
    Unique per (patient, model, event time), the highest revision kept, as ``scores``."""

    __tablename__ = "shadow_scores"
    __table_args__ = (
        UniqueConstraint("patient_id", "model", "event_time"),
        Index("ix_shadow_scores_event_time", "event_time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    event_time: Mapped[datetime]
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[Optional[str]] = mapped_column(String(64))
    deterioration_risk: Mapped[float] = mapped_column(Float)
    sepsis_risk: Mapped[float] = mapped_column(Float)
    scored_at: Mapped[datetime]
    revision: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")


class ShadowAlert(Base):
    """An alert episode the shadow model would have raised (same hysteresis and quiet periods as
    the live alerts, at the shadow model's thresholds). Never shown to nurses, never published."""

    __tablename__ = "shadow_alerts"
    __table_args__ = (Index("ix_shadow_alerts_event_time", "event_time"),)

    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    risk: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[Optional[str]] = mapped_column(String(64))
    episode_start: Mapped[datetime]
    event_time: Mapped[datetime]
    """The score that confirmed the episode (when the live model would have paged)."""
    raised_at: Mapped[datetime]
    closed_at: Mapped[Optional[datetime]]
    """Event time of the score that closed the episode; None while open."""


class ServedModel(Base):
    """What a worker scores with, written as it starts: the model, its role (``live`` or ``shadow``)
    and the 'on' threshold per alert kind it alerts at, so a report can say whether two models'
    scores agree on paging."""

    __tablename__ = "served_models"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    thresholds: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]


class DriftCount(Base):
    """Counts of one worker (``writer``) for one unit, event-time hour and column
    (``streams/drift.py``): a histogram of a feature-row column (``core/drift.py`` bins, missing
    last), ``present:<modality>`` [absent, present], ``arrivals:<topic>`` [messages] or
    ``patients`` [distinct patients]. Rewritten with the writer's cumulative counts at each flush."""

    __tablename__ = "drift_counts"
    __table_args__ = (Index("ix_drift_counts_bucket_start", "bucket_start"),)

    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    column: Mapped[str] = mapped_column(String(64), primary_key=True)
    writer: Mapped[str] = mapped_column(String(128), primary_key=True)
    counts: Mapped[list[int]] = mapped_column(JSON())


class UnitMode(Base):
    """A unit's mode (``storage/units.py``): ``silent`` records the model's scores and alerts
    without showing them to the unit's nurses; ``live`` (also every unit without a row) shows them."""

    __tablename__ = "unit_modes"
    __table_args__ = (CheckConstraint("mode IN ('silent', 'live')", name="mode"),)

    unit: Mapped[str] = mapped_column(String(64), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    changed_by: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime]
    reason: Mapped[Optional[str]] = mapped_column(Text)


class UnitModeEvent(Base):
    """Audit log of unit mode changes: who, when, why, and the alerts shown when a unit went live."""

    __tablename__ = "unit_mode_events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    unit: Mapped[str] = mapped_column(String(64), index=True)
    mode: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime]
    reason: Mapped[Optional[str]] = mapped_column(Text)
    detail: Mapped[dict[str, Any]]


class UnitThreshold(Base):
    """A unit's own alert threshold for one kind and model (``icuwatch tune-thresholds --unit``),
    versioned: each tuning adds a version and makes it the active one; a rollback makes the previous
    version active again. The rows are the audit trail (who, when, on what figures)."""

    __tablename__ = "unit_thresholds"
    __table_args__ = (UniqueConstraint("unit", "kind", "model", "version"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    unit: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[Optional[float]] = mapped_column(Float)
    """None: back to the model's own threshold (a rollback past the first version)."""
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    detail: Mapped[dict[str, Any]]
    """The tuning's figures (data window, source, outcomes, sensitivity, episodes per patient-day),
    or for a rollback the version it replaced."""


class ModelRole(Base):
    """Which served model is live and which is the shadow (``icuwatch models shadow``, ``models
    promote --shadow``), append-only: the newest row per role is in force (model ``""``: no shadow),
    the rows before it are the audit trail. Without a row the workers' settings decide."""

    __tablename__ = "model_roles"
    __table_args__ = (CheckConstraint("role IN ('live', 'shadow')", name="role"),)

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    role: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(128))
    set_by: Mapped[str] = mapped_column(String(128))
    set_at: Mapped[datetime]
    reason: Mapped[Optional[str]] = mapped_column(Text)
