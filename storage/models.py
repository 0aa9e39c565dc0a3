"""Database tables: patients, scores and alerts.

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
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

ALERT_STATES = ("raised", "acknowledged", "resolved")

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

    def process_result_value(
        self, value: Optional[datetime], dialect: Dialect
    ) -> Optional[datetime]:
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

    def __repr__(self) -> str:
        return f"Score({self.patient_id!r}, {self.model!r}, {self.event_time.isoformat()})"


class Alert(Base):
    """An alert episode: raised -> acknowledged -> resolved, or raised -> resolved."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint(
            "state IN ('raised', 'acknowledged', 'resolved')", name="state"
        ),
        Index("ix_alerts_state_event_time", "state", "event_time"),
        Index("ix_alerts_patient_id_event_time", "patient_id", "event_time"),
    )

    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    risk: Mapped[float] = mapped_column(Float)
    news2: Mapped[int] = mapped_column(SmallInteger)
    qsofa: Mapped[int] = mapped_column(SmallInteger)
    model: Mapped[str] = mapped_column(String(128))
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

    def __repr__(self) -> str:
        return f"Alert({self.alert_id!r}, {self.kind!r}, state={self.state!r})"
