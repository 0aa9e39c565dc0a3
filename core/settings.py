"""The one settings object, read from ``ICUWATCH_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


SHIPPED_MODEL_REPOSITORY = Path(__file__).resolve().parents[1] / "serving" / "models"
"""The committed Triton model repository (``icuwatch.serving.MODEL_REPOSITORY``; a path here so the
worker can read a served model's ``export.json`` without importing the serving layer)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ICUWATCH_", extra="ignore")

    broker: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, ``host:port[,host:port]``."""
    broker_retry_max_s: float = 5.0
    """Longest pause between attempts to reach a broker that is not up (yet): the worker and the
    listeners start without it, retry with backoff up to this, and connect once it answers."""
    partitions: int = 4
    """Partitions of every topic (all co-partitioned by patient id)."""
    replication_factor: int = 1
    """Replicas of every topic icuwatch creates, table changelogs included (1 for the local broker;
    3 in production, with min.insync.replicas 2 on the cluster)."""
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every icuwatch Kafka client (worker, producers, replay readers) talks to the brokers:
    PLAINTEXT locally, SASL_SSL in production (``streams/kafka/security.py``)."""
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    """From the environment only (a Secret in production); never logged (``SecretStr``)."""
    kafka_ssl_cafile: Path | None = None
    """CA bundle that signed the brokers' certificates (unset: the system's trust store)."""
    kafka_ssl_certfile: Path | None = None
    """Client certificate, for brokers that require mutual TLS (with ``kafka_ssl_keyfile``)."""
    kafka_ssl_keyfile: Path | None = None

    triton_url: str = "127.0.0.1:8001"
    """Triton gRPC endpoint."""
    triton_http_port: int = 8000
    triton_metrics_port: int = 8002
    triton_model: str = "early_warning"
    triton_model_repository: Path | None = None
    """Model repository the local tritonserver serves instead of ``serving/models`` (unset: that one)."""
    triton_extra_repositories: str = ""
    """More model repositories served beside it, ``os.pathsep``-separated (e.g. ``var/triton/models``
    from ``icuwatch export-triton``); model names must be unique across repositories."""
    scoring_model: str = "student_live"
    """The learned model the worker scores with, served by Triton. ``student_live`` (default; committed
    in ``serving/models``, made by ``icuwatch distill-live``): the worker sends the live rows
    (``streams/live_row.py``: all five modalities) and publishes its sepsis and deterioration
    probabilities; NEWS2 and qSOFA are the rule values beside them. ``student_physionet`` (a model
    exported from a PhysioNet-trained fusion model by ``export-triton``): PhysioNet-cohort rows
    (``streams/student_row.py``), sepsis only, deterioration from the rules (model ``<name>+rules``).
    Empty: the feature row to ``triton_model`` (the rule scores of ``early_warning``)."""
    scoring_model_dir: Path | None = None
    """Directory with the ``export.json`` (an exported model version) or ``model_card.json`` (a trained
    model) that gives ``scoring_model``'s normalisation, risks and alert thresholds; unset: the highest
    version's ``export.json`` in the served repositories, else ``<state_dir>/models/<name with _ as ->``."""
    shadow_model: str = ""
    """A second served model the workers score every patient with, in the same batches as the live
    one (``streams/shadow.py``): a student with an ``export.json`` (it gets its own rows) or a model
    reading the feature row (``early_warning``). Its scores and would-be alerts go to their own
    tables, never to nurses, ``icu.alerts`` or FHIR; ``icuwatch shadow report`` compares them with the
    live model's. Empty: no shadow."""
    alert_thresholds: Literal["model", "settings"] = "model"
    """``model``: a risk the scoring model answers alerts at the threshold its card chose on validation
    data (the 'off' threshold keeps the settings' off/on ratio), unless that risk's ``*_on`` is set
    explicitly (``ICUWATCH_SEPSIS_ON=...``: the setting wins); ``settings``: at ``*_on``/``*_off``
    below, whatever scores."""
    triton_timeout_s: float = 2.0
    triton_retry_s: float = 5.0
    """After a failed call, score in-process for this long before trying Triton again."""

    database_url: str = f"sqlite:///{REPO_ROOT / 'var' / 'icuwatch.db'}"
    database_wait_s: float = 300.0
    """How long ``storage.db.upgrade`` (run as ``icuwatch api`` and ``icuwatch db upgrade`` start) waits,
    retrying with backoff, for a database server that refuses connections (not up yet)."""

    state_dir: Path = REPO_ROOT / "var"
    """Pid files, logs and worker state of the local stack."""

    app_id: str = "icuwatch"
    """Faust application id: the consumer group and the prefix of the table changelogs."""
    worker_web_port: int = 6066
    score_interval_s: float = 300.0
    """Event-time cadence at which each patient is rescored (important events also trigger)."""
    waveform_feature_interval_s: float = 60.0
    """Event time between ECG/PPG feature computations per patient (the QRS detector is costly)."""
    consumer_fetch_max_wait_ms: int = 100
    """How long the broker may hold the worker's fetch when a partition has nothing new. Faust fixes
    1,500 ms, and this Tansu answers only when that time is up even if records arrive meanwhile
    (it ignores fetch.min.bytes' early answer): a record on a quiet partition waited up to 1.5 s."""
    worker_producer_max_batch_bytes: int = 1
    """Record batch size of the worker's producer (table changelogs, scores, alerts, dead letters).
    1: every record is its own batch. This Tansu answers "latest offset" with the base offset of a
    partition's last batch + 1, so after batched writes Faust's changelog recovery stopped short and
    a restarted worker lost the last updates of its tables; with one record per batch the answer is
    exact. Production Kafka has no such bug: 16384 (Faust's default) there."""
    worker_memory_profile_s: float = 0.0
    """0: off. Otherwise the worker traces its allocations (``tracemalloc``, one frame: slower) and
    every this many seconds writes the source lines holding the most memory, and what each gained
    since the first snapshot, to ``<state_dir>/run/memory-<web port>.json`` (a soak's leak hunt)."""
    worker_gc_freeze_s: float = 10.0
    """Every this many seconds the worker moves what survived into the collector's permanent
    generation (``gc.freeze``, O(1)), so collections walk only what was allocated since: at 1,000
    beds the middle generation grew to hundreds of thousands of held Faust events, and walking it
    paused the worker 0.3-0.4 s every ~45 s while it freed almost nothing. 0: off."""
    worker_gc_full_s: float = 3600.0
    """Every this many seconds a frozen worker unfreezes and runs one full collection (cycles that
    became garbage while frozen: a few tens of objects a second), then freezes again."""
    ack_idle_s: float = 10.0
    """Wall seconds after a patient's last message before its unacknowledged messages are
    checkpointed and acknowledged anyway (``streams/kafka/acks.py``)."""
    worker_stage_times: bool = False
    """Keep each score's hand-off times inside the worker (``streams/stage_times.py``), appended to
    ``run_dir/worker-PORT-stages.f64`` once a second (``icuwatch bench pipeline`` turns it on)."""
    batch_max: int = 256
    batch_wait_s: float = 0.01
    """How long the first row of a scoring batch waits for others (the rows that arrive while a batch
    is being scored make the next batch: ``streams/batcher.py``)."""
    alert_batch_max: int = 500
    """Scores the alert agent stores in one transaction at most."""
    alert_batch_wait_s: float = 0.05
    """How long the alert agent waits to fill a batch of scores."""
    live_max_future_s: float = 300.0
    """Live sources know the time: the HL7 listener refuses an event time more than this ahead of its
    clock (clock skew between systems), and the worker one more than this ahead of the timestamp of a
    record a live source marked (``streams/kafka/producer.py``: ``LIVE_HEADER``). 0: not checked."""
    live_max_age_s: float = 7 * 86400.0
    """The same for event times older than this (late lab results, a feed catching up). 0: not checked."""
    clock_max_jump_s: float = 86400.0
    """Records not marked live (replays, the simulator, feeds writing straight to the topics): the
    worker refuses a vital sign more than this ahead of the patient's clock (or of a later admission)
    or behind it. 24 h covers the longest gap between vital signs of a PhysioNet stay (17 h in set B).
    0: not checked."""

    deterioration_on: float = 0.5
    deterioration_off: float = 0.3
    sepsis_on: float = 0.5
    sepsis_off: float = 0.3
    alert_confirm: int = 2
    """Consecutive scores above the 'on' threshold needed to open an alert episode."""
    alert_clear: int = 3
    """Consecutive scores below the 'off' threshold needed to close it."""
    alert_refractory_s: float = 1800.0
    """Event-time seconds after an episode closes before another of the same kind may open."""
    alert_realert_after_resolve_s: float = 1800.0
    """Re-alert time after a resolve: when a nurse resolves an alert while its episode is still open
    (the risk has not come down), the worker closes that episode at its next score of the patient
    and opens a new one (a new alert) once the risk has stayed at or above 'on' for
    ``alert_confirm`` scores and this many event-time seconds have passed since that score."""
    silence_vitals_s: float = 300.0
    """Data liveness: a patient whose vital signs have not arrived for this many wall seconds is
    "silent" on the board and patient page, and gets a ``data_liveness`` alert (monitor off,
    network down) with the same lifecycle as a risk alert. 0: not watched."""
    silence_waveforms_s: float = 300.0
    """The same for waveform chunks (shown, no alert of its own). 0: not watched."""
    silence_labs_s: float = 86400.0
    """The same for lab results (shown, no alert). 0: not watched."""
    silence_cxr_s: float = 0.0
    """The same for chest X-rays (shown, no alert). 0: not watched (days apart is normal)."""
    drift_flush_s: float = 30.0
    """How often each worker writes its drift counts (``streams/drift.py``) to the database."""
    liveness_check_s: float = 15.0
    """How often the worker checks every patient's data liveness and stores when data last arrived."""
    alert_escalate_after_s: float = 300.0
    """An alert left unacknowledged this long (wall clock) is escalated, and again every as long."""

    api_host: str = "127.0.0.1"
    """Where ``icuwatch serve`` listens (``--host``/``--port`` override)."""
    api_port: int = 8080
    api_stream_poll_s: float = 1.0
    """How often the live alert stream (SSE) polls the database for changed alerts."""
    api_stream_keepalive_s: float = 15.0
    """Idle time after which the stream sends a keep-alive comment."""
    api_escalate_interval_s: float = 30.0
    """How often the API escalates alerts left unacknowledged too long."""
    api_token_ttl_s: float = 12 * 3600.0
    """Lifetime of a new nurse or physician token (``icuwatch token create``): about a shift. 0: never expires."""
    api_operator_token_ttl_s: float = 30 * 86400.0
    """Lifetime of a new engineer or admin token (e.g. a Prometheus scraper's). 0: never expires."""
    api_max_body_bytes: int = 1_000_000
    """Larger request bodies are refused with 413 before the API parses them."""
    api_docs: bool = True
    """Serve ``/docs`` and ``/openapi.json`` (both need a token even then); false in production."""

    dicom_host: str = "127.0.0.1"
    """Where ``icuwatch dicom-listen`` (the C-STORE SCP for chest X-rays) listens."""
    dicom_port: int = 11112
    dicom_ae_title: str = "ICUWATCH"
    """The SCP's AE title; associations calling any other title are rejected."""
    dicom_broker_timeout_s: float = 30.0
    """How long the SCP waits for the broker to confirm an ``icu.cxr`` message before refusing."""

    patient_id_authority: str = ""
    """This site's assigning authority of patient identifiers (HL7 PID-3.4, its first subcomponent;
    DICOM IssuerOfPatientID). Set: an identifier another authority assigned is refused, one without
    an authority is taken as this site's. Unset (default): not checked -- for a site whose HL7 and
    DICOM feeds carry one hospital's identifiers only."""
    unadmitted_data: Literal["accept", "refuse"] = "accept"
    """Data (HL7 ORU, DICOM images) about a patient ADT never admitted, or discharged before the
    observation; one policy for both listeners. ``accept`` (default): taken in and scored, and the
    board shows "no ADT admission" (refusing it would silence a real patient whenever the ADT feed
    is late or down). ``refuse``: HL7 AE (not known / no admission: retry, the ADT may be late) or AR
    (discharged before the observation), DICOM 0xC001; both look the patient up in the database's
    ``patients`` table (``interfaces/patient_directory.py``)."""
    fhir_patient_identifier_system: str = "urn:icuwatch:patient"
    """The identifier system (URI) of the hospital's patient identifiers in the EHR (its MRN system):
    every FHIR resource's subject is the logical reference ``{system, value: patient id}``."""
    fhir_endpoint: str | None = None
    """FHIR R4 base URL that each alert's transaction Bundle is pushed to; unset: no push."""
    fhir_token: str | None = None
    """Bearer token for ``fhir_endpoint`` (optional)."""
    fhir_push_attempts: int = 5
    """Tries per Bundle (connection errors, 408, 429, 5xx are retried; other 4xx are not)."""
    fhir_push_backoff_s: float = 0.5
    """First retry delay; doubles per retry (with jitter), at most ``fhir_push_backoff_max_s``."""
    fhir_push_backoff_max_s: float = 10.0
    fhir_push_timeout_s: float = 10.0
    """Per-request timeout of a push."""
    fhir_push_queue: int = 1000
    """Bundles waiting to be pushed; when full the oldest is dropped (and counted)."""

    hl7_host: str = "127.0.0.1"
    """Where ``icuwatch hl7-listen`` listens for MLLP (``--host``/``--port`` override)."""
    hl7_port: int = 2575
    hl7_mapping: Path | None = None
    """Extra HL7 observation mapping CSV that extends/overrides ``interfaces/mappings/hl7_observations.csv``."""
    hl7_timezone: str = "UTC"
    """IANA zone for HL7 timestamps sent without a UTC offset."""
    hl7_ack_timeout_s: float = 30.0
    """How long the HL7 listener waits for the broker's acknowledgement before answering AE."""

    def silence_after_s(self) -> dict[str, float]:
        """Per modality, seconds without data after which it counts as silent (0: not watched)."""
        return {
            "vitals": self.silence_vitals_s,
            "waveforms": self.silence_waveforms_s,
            "labs": self.silence_labs_s,
            "cxr": self.silence_cxr_s,
        }

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"


def model_repositories(settings: Settings) -> list[Path]:
    """The Triton model repositories served: the main one (``triton_model_repository`` or the shipped
    one), then ``triton_extra_repositories``."""
    main = settings.triton_model_repository or SHIPPED_MODEL_REPOSITORY
    extra = [Path(p) for p in settings.triton_extra_repositories.split(os.pathsep) if p.strip()]
    return [Path(main), *extra]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
