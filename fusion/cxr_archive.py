"""A chest X-ray archive searchable by report-like text through the joint embedding.

An archive is a folder (default ``var/cxr_archive/``):

* ``images/``: the studies as PNG/JPEG files (simulated ones are written there; real files added
  with :func:`add_images` are copied in, so the archive stands on its own);
* ``index.json``: ``{"studies": [...]}``, one entry per study: ``study_id``, ``file`` (relative to
  the archive), ``report`` (optional), ``acquired_at`` (ISO 8601, optional), ``patient_id``
  (optional), ``source`` ('sim' or 'file'), ``sha256`` of the file; simulated studies also carry
  ``pattern``/``severity``/``lobe``/``finding``;
* ``embeddings.npy`` + ``embeddings.json``: cached image embeddings, one row per study in index
  order, tagged with the model's fingerprint and each file's (size, mtime); rows are recomputed
  when the model or a file changes, or a study is new.

:func:`search` ranks the studies by cosine similarity between a text's embedding and the image
embeddings (:mod:`icuwatch.fusion.joint_space`, loaded from
``var/models/joint_embedding`` unless given). The reports are not searched: ranking is on the
image alone, so studies without a report are found too.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from icuwatch.signals.cxr_image import load_cxr, png_to_array

INDEX_FILE = "index.json"
EMB_FILE = "embeddings.npy"
EMB_META_FILE = "embeddings.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SIM_EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def default_archive_dir() -> Path:
    from icuwatch.core.settings import get_settings

    return get_settings().state_dir / "cxr_archive"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class CxrArchive:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_archive_dir()

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def studies(self) -> list[dict]:
        path = self.root / INDEX_FILE
        if not path.exists():
            return []
        return json.loads(path.read_text())["studies"]

    def __len__(self) -> int:
        return len(self.studies())

    def _write_index(self, studies: list[dict]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.root / INDEX_FILE, (json.dumps({"studies": studies}, indent=1) + "\n").encode())

    def path_of(self, study: dict) -> Path:
        p = Path(study["file"])
        return p if p.is_absolute() else self.root / p

    # ------------------------------------------------------------------------------- adding

    def add_simulated(self, n: int, seed: int = 1, studies_per_patient: int = 4) -> list[str]:
        """Write ``n`` simulated studies (``joint_space.simulate_studies``, seed ``seed``);
        ids ``sim{seed}-NNNNN``, so rerunning with the same seed adds nothing twice. Returns the
        new study ids. Acquisition times are synthetic: each patient's studies 6 h apart."""
        from icuwatch.fusion.joint_space import simulate_studies

        studies = self.studies()
        known = {s["study_id"] for s in studies}
        ids = [f"sim{seed}-{i:05d}" for i in range(n)]
        if all(i in known for i in ids):
            return []
        _, sims = simulate_studies(n, seed=seed)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        added = []
        for i, (sid, s) in enumerate(zip(ids, sims)):
            if sid in known:
                continue
            rel = Path("images") / f"{sid}.png"
            _atomic_write(self.root / rel, s["png"])
            patient, k = divmod(i, studies_per_patient)
            t = SIM_EPOCH + timedelta(days=patient % 365, hours=6 * k)
            studies.append(
                {
                    "study_id": sid,
                    "file": rel.as_posix(),
                    "report": s["report"],
                    "acquired_at": t.isoformat(),
                    "patient_id": f"sim{seed}-p{patient:04d}",
                    "source": "sim",
                    "sha256": hashlib.sha256(s["png"]).hexdigest(),
                    "pattern": s["pattern"],
                    "severity": s["severity"],
                    "lobe": s["lobe"],
                    "finding": s["finding"],
                }
            )
            added.append(sid)
        self._write_index(studies)
        return added

    def add_images(
        self, folder: str | Path, recursive: bool = True, copy: bool = True, patient_id: str | None = None
    ) -> list[str]:
        """Index the PNG/JPEG files under ``folder`` (copied into ``images/`` unless ``copy=False``,
        which indexes them where they are, by absolute path). A sidecar ``NAME.txt`` next to an
        image is its report; a sidecar ``NAME.json`` may give ``report``, ``acquired_at`` and
        ``patient_id``. Files already in the archive (same content) are skipped; unreadable
        ones raise. Returns the new study ids."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder")
        files = sorted(
            p
            for p in (folder.rglob("*") if recursive else folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        studies = self.studies()
        known = {s.get("sha256") for s in studies}
        ids = {s["study_id"] for s in studies}
        added = []
        for src in files:
            data = src.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest in known:
                continue
            try:
                png_to_array(data)
            except Exception as exc:
                raise ValueError(f"{src}: not a readable PNG/JPEG image ({exc})") from None
            sid = f"{src.stem}-{digest[:8]}"
            while sid in ids:
                sid += "x"
            extra = {}
            if src.with_suffix(".json").exists():
                extra = json.loads(src.with_suffix(".json").read_text())
            report = extra.get("report")
            if report is None and src.with_suffix(".txt").exists():
                report = src.with_suffix(".txt").read_text().strip()
            if copy:
                self.images_dir.mkdir(parents=True, exist_ok=True)
                rel = Path("images") / f"{sid}{src.suffix.lower()}"
                shutil.copyfile(src, self.root / rel)
                file = rel.as_posix()
            else:
                file = str(src.resolve())
            studies.append(
                {
                    "study_id": sid,
                    "file": file,
                    "report": report,
                    "acquired_at": extra.get("acquired_at"),
                    "patient_id": extra.get("patient_id", patient_id),
                    "source": "file",
                    "sha256": digest,
                }
            )
            known.add(digest)
            ids.add(sid)
            added.append(sid)
        self._write_index(studies)
        return added

    def add_recorded(self, record_file: str | Path) -> list[str]:
        """Index the X-rays of an ``icuwatch record`` file (``icu.cxr`` lines, v1 ``Cxr`` messages):
        what arrived through the stream becomes searchable. Lines that are not valid ``Cxr`` messages
        are skipped and counted in the log, never half-added; a study id already in the archive is
        not added twice."""
        import base64
        import logging
        from datetime import datetime, timezone

        from icuwatch.core import schemas
        from icuwatch.sources.recording import read_archive

        studies = self.studies()
        ids = {s["study_id"] for s in studies}
        added, skipped = [], 0
        for line in read_archive(record_file):
            if line.get("topic") != "icu.cxr" or line.get("value") is None:
                continue
            try:
                msg = schemas.Cxr.model_validate_json(line["value"])
                data = base64.b64decode(msg.image_b64)
                png_to_array(data)
            except Exception:
                skipped += 1
                continue
            sid = msg.study_id
            if sid in ids:
                continue
            rel = Path("images") / f"{sid}.{'jpg' if msg.image_format == 'jpeg' else 'png'}"
            self.images_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.root / rel, data)
            studies.append(
                {
                    "study_id": sid,
                    "file": rel.as_posix(),
                    "report": msg.report,
                    "acquired_at": datetime.fromtimestamp(msg.event_time, timezone.utc).isoformat(),
                    "patient_id": msg.patient_id,
                    "source": "stream",
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            ids.add(sid)
            added.append(sid)
        if skipped:
            logging.getLogger(__name__).warning("%d icu.cxr lines were not valid X-ray messages; skipped", skipped)
        self._write_index(studies)
        return added

    # --------------------------------------------------------------------------- embeddings

    def embeddings(self, model, batch_size: int = 64) -> np.ndarray:
        """float32 [len(studies), D] unit image embeddings in index order, from the cache where
        the model fingerprint and the file's size/mtime still match; the cache is rewritten."""
        from icuwatch.fusion.joint_space import embed_images

        studies = self.studies()
        fingerprint = model.fingerprint()
        keys = []
        for s in studies:
            st = self.path_of(s).stat()
            keys.append(f"{s['study_id']}|{s['file']}|{st.st_size}|{st.st_mtime_ns}")
        cached: dict[str, np.ndarray] = {}
        meta_path, emb_path = self.root / EMB_META_FILE, self.root / EMB_FILE
        if meta_path.exists() and emb_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("model") == fingerprint:
                old = np.load(emb_path)
                if len(old) == len(meta.get("keys", [])):
                    cached = dict(zip(meta["keys"], old))
        todo = [i for i, k in enumerate(keys) if k not in cached]
        if not todo and list(cached) == keys:
            return np.stack([cached[k] for k in keys]) if keys else np.zeros((0, model.embed_dim), np.float32)
        out = np.zeros((len(keys), model.embed_dim), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in cached:
                out[i] = cached[k]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = np.stack([load_cxr(self.path_of(studies[i])) for i in chunk])
            out[chunk] = embed_images(model, images)
        if keys:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / (EMB_FILE + ".tmp.npy")
            np.save(tmp, out)
            tmp.replace(emb_path)
            _atomic_write(meta_path, json.dumps({"model": fingerprint, "keys": keys}).encode())
        return out

    def search(self, text: str, top_k: int = 5, model=None) -> list[dict]:
        """The ``top_k`` studies whose images are most similar to ``text``, best first: each the
        index entry plus ``rank``, ``score`` (cosine similarity) and ``path`` (absolute)."""
        from icuwatch.fusion.joint_space import embed_texts

        model = model if model is not None else load_model()
        studies = self.studies()
        if not studies or top_k <= 0:
            return []
        emb = self.embeddings(model)
        q = embed_texts(model, [text])[0]
        scores = emb @ q
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            dict(studies[i], rank=r + 1, score=round(float(scores[i]), 4), path=str(self.path_of(studies[i])))
            for r, i in enumerate(order)
        ]


def load_model(model_dir: str | Path | None = None):
    from icuwatch.fusion.joint_space import CARD_FILE, JointEmbedding, default_model_dir

    path = Path(model_dir) if model_dir is not None else default_model_dir()
    if not (path / CARD_FILE).exists():
        raise FileNotFoundError(f"no joint embedding model in {path}: run `icuwatch cxr-index` to train one")
    return JointEmbedding.load(path)


def build_sim_archive(n: int, seed: int = 1, root: str | Path | None = None) -> CxrArchive:
    """Add ``n`` simulated studies (seed ``seed``) to the archive at ``root``; returns it."""
    archive = CxrArchive(root)
    archive.add_simulated(n, seed=seed)
    return archive


def add_images(folder: str | Path, root: str | Path | None = None, **kwargs) -> list[str]:
    """Index the real PNG/JPEG files under ``folder`` into the archive at ``root``."""
    return CxrArchive(root).add_images(folder, **kwargs)


def search(text: str, top_k: int = 5, root: str | Path | None = None, model=None) -> list[dict]:
    """Rank the archive's images by similarity to ``text`` (see :meth:`CxrArchive.search`)."""
    return CxrArchive(root).search(text, top_k, model=model)


DEFAULT_SIM = 200
"""Simulated studies an empty archive gets when ``build_index`` is given nothing to add."""


def build_index(
    archive_dir: str | Path | None = None,
    *,
    model_dir: str | Path | None = None,
    retrain: bool = False,
    train_pairs: int | None = None,
    train_seed: int = 0,
    epochs: int | None = None,
    n_sim: int | None = None,
    sim_seed: int = 1,
    image_folders: Sequence[str | Path] = (),
    record_files: Sequence[str | Path] = (),
    progress: bool = False,
) -> dict:
    """``icuwatch cxr-index``: train the joint embedding on simulated studies when none is saved in
    ``model_dir`` (or ``retrain``), add simulated studies, real image folders and recorded ``icu.cxr``
    streams to the archive, refresh its embedding cache, and say what was done."""
    from icuwatch.fusion import joint_space

    model_path = Path(model_dir) if model_dir else joint_space.default_model_dir()
    summary: dict = {"model": str(model_path), "trained": False}
    if retrain or not (model_path / joint_space.CARD_FILE).exists():
        _, card = joint_space.train_on_simulated(
            n=train_pairs or joint_space.DEFAULT_PAIRS,
            seed=train_seed,
            epochs=epochs if epochs is not None else joint_space.DEFAULT_EPOCHS,
            progress=progress,
            out_dir=model_path,
        )
        summary |= {
            "trained": True,
            "heldout_retrieval": card["heldout_retrieval"],
            "training_seconds": card["training"]["seconds"],
        }
    model = load_model(model_path)
    archive = CxrArchive(archive_dir)
    if n_sim is None and not image_folders and not record_files and len(archive) == 0:
        n_sim = DEFAULT_SIM
    added_sim = archive.add_simulated(n_sim, seed=sim_seed) if n_sim else []
    added_files: list = []
    for folder in image_folders:
        added_files += archive.add_images(folder)
    for record_file in record_files:
        added_files += archive.add_recorded(record_file)
    emb = archive.embeddings(model)
    return summary | {
        "archive": str(archive.root),
        "studies": len(archive),
        "added_sim": len(added_sim),
        "added_files": len(added_files),
        "embeddings": list(emb.shape),
    }
