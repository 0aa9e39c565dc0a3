"""fusion.joint_space (CLIP-style X-ray/report embedding), fusion.cxr_archive and
its CLI (cli.cxr), on synthetic simulator studies."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from icuwatch.cli import cxr as cxr_cli
from icuwatch.encoders import tokenizer
from icuwatch.fusion import cxr_archive
from icuwatch.fusion import joint_space as je

DIFFUSE_QUERY = (
    "Extensive bilateral diffuse hazy and airspace opacities, basal and perihilar predominant;"
    " pulmonary edema versus ARDS."
)
CLEAR_QUERY = "The lungs are clear. No pleural effusion. No pneumothorax. Impression: No acute cardiopulmonary process."


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Timing-free but CPU-heavy: one thread, so parallel work on 2 cores stays predictable."""


@pytest.fixture(scope="module")
def trained(_one_thread):
    """A small model trained for a few seconds on 240 simulated pairs (seeded). Sixteen epochs, not
    fewer: after eight, the clear-lungs query's top 8 held 1 to 6 clear films depending on the CPU's
    vector kernels (AVX-512, AVX2, generic) and the seed; after sixteen, 4 or 5 on every one tried."""
    images, studies = je.simulate_studies(240, seed=0)
    tokens = tokenizer.encode([s["report"] for s in studies])
    model, card = je.train_joint(
        images,
        tokens,
        seed=0,
        epochs=16,
        batch_size=32,
        progress=False,
        findings=[s["finding"] for s in studies],
        holdout=0.2,
    )
    return model, card


def test_simulated_studies_are_seeded_and_consistent():
    a, sa = je.simulate_studies(6, seed=3)
    b, sb = je.simulate_studies(6, seed=3)
    assert a.shape == (6, 224, 224) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert [s["report"] for s in sa] == [s["report"] for s in sb]
    for s in sa:
        seen = s["pattern"] != "clear" and s["severity"] >= 0.15
        assert (s["finding"] not in ("clear", "edema")) == seen
        assert (s["finding"] == "edema") == (not seen and s["findings"]["edema"] > 0)
    assert je.finding_label(0.5, "diffuse") == "diffuse/moderate"
    assert je.finding_label(0.1, "pneumonia", edema=0.4) == "edema" and je.finding_label(0.0, "clear") == "clear"


def test_simulated_studies_look_like_an_icus_portable_films():
    """Films carry findings of their own (so an opacity-free film is not a blank one) and each
    report is worded for its study: few reports repeat, and what a film shows is in its report."""
    _, studies = je.simulate_studies(200, seed=4)
    reports = [s["report"] for s in studies]
    assert len(set(reports)) >= 0.9 * len(reports)
    clear = [s for s in studies if s["finding"] == "clear"]
    assert len(clear) >= 20 and np.mean([bool(s["findings"]["findings"]) for s in clear]) > 0.3
    for s in studies:
        text = s["report"].lower()
        if s["findings"]["ett_cm"] is not None:
            assert "et tube" in text or "endotracheal" in text
        if s["findings"]["effusion"] is not None:
            assert "effusion" in text
        if s["finding"].startswith("pneumonia"):
            assert "pneumonia" in text
    diffuse = [s for s in studies if s["pattern"] == "diffuse"]
    assert diffuse and all(s["findings"]["edema"] == 0.0 for s in diffuse)  # its opacity is the edema/ARDS


def test_tiny_training_lowers_contrastive_loss():
    images, studies = je.simulate_studies(48, seed=1)
    tokens = tokenizer.encode([s["report"] for s in studies])
    untrained, _ = je.train_joint(images, tokens, seed=0, epochs=0, progress=False, holdout=0.0)
    before = je.evaluate_loss(untrained, images, tokens, batch_size=16)
    model, card = je.train_joint(images, tokens, seed=0, epochs=2, batch_size=16, progress=False, holdout=0.0)
    after = je.evaluate_loss(model, images, tokens, batch_size=16)
    assert np.isfinite(before) and after < before - 0.05
    assert card["training"]["epochs"] == 2 and len(card["training"]["train_loss_per_epoch"]) == 2
    assert card["sizes"]["train"] == 48 and card["heldout_retrieval"] is None


def test_embeddings_unit_norm_and_save_load_roundtrip(trained, tmp_path):
    model, card = trained
    images, studies = je.simulate_studies(5, seed=9)
    ie = je.embed_images(model, images)
    te = je.embed_texts(model, [s["report"] for s in studies])
    assert ie.shape == (5, model.embed_dim) and te.shape == (5, model.embed_dim) and ie.dtype == np.float32
    assert np.allclose(np.linalg.norm(ie, axis=1), 1, atol=1e-5)
    assert np.allclose(je.embed_texts(model, tokenizer.encode([studies[0]["report"]])), te[:1], atol=1e-6)

    model.save(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / je.CARD_FILE).read_text())
    assert saved["sizes"]["heldout"] == 48 and saved["training"]["epochs"] == 16
    assert "text_to_image_finding_recall@1" in saved["heldout_retrieval"]
    again = je.JointEmbedding.load(tmp_path / "m")
    assert again.fingerprint() == model.fingerprint() == saved["fingerprint"]
    assert np.allclose(je.embed_images(again, images), ie, atol=1e-6)


def test_heldout_retrieval_beats_chance(trained):
    _, card = trained
    m = card["heldout_retrieval"]
    assert m["pairs"] == 48
    assert m["text_to_image_finding_precision@5"] > m["finding_chance"] + 0.1
    assert m["image_to_text_finding_recall@1"] > m["finding_chance"]


def test_retrieval_metrics_on_a_perfect_embedding():
    e = np.eye(4, dtype=np.float32)
    m = je.retrieval_metrics(e, e, ["a", "a", "b", "c"], np.array([0, 1, 2, 3]))
    assert m["text_to_image_recall@1"] == 1.0 and m["image_to_text_recall@1"] == 1.0
    assert m["image_to_report_recall@1"] == 1.0 and m["finding_chance"] == pytest.approx(6 / 16)


def test_archive_search_finds_matching_patterns(trained, tmp_path):
    model, _ = trained
    archive = cxr_archive.build_sim_archive(40, seed=5, root=tmp_path / "arch")
    studies = archive.studies()
    assert len(studies) == 40 and all(archive.path_of(s).exists() for s in studies)
    assert archive.add_simulated(40, seed=5) == []  # idempotent per seed
    patterns = np.array([s["finding"].split("/")[0] for s in studies])

    def share(query: str, want: str) -> float:
        hits = archive.search(query, top_k=8, model=model)
        assert [h["rank"] for h in hits] == list(range(1, 9))
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        return float(np.mean([h["finding"].split("/")[0] == want for h in hits]))

    diffuse_base, clear_base = np.mean(patterns == "diffuse"), np.mean(patterns == "clear")
    assert share(DIFFUSE_QUERY, "diffuse") > diffuse_base + 0.1
    assert share(CLEAR_QUERY, "clear") > clear_base + 0.2
    assert share(DIFFUSE_QUERY, "diffuse") > share(CLEAR_QUERY, "diffuse")

    # the cache is reused, and rebuilt for another model
    meta = json.loads((archive.root / cxr_archive.EMB_META_FILE).read_text())
    assert meta["model"] == model.fingerprint() and len(meta["keys"]) == 40
    cached = archive.embeddings(model)
    other = je.JointEmbedding()
    assert not np.allclose(archive.embeddings(other), cached)
    assert json.loads((archive.root / cxr_archive.EMB_META_FILE).read_text())["model"] == other.fingerprint()
    assert np.allclose(archive.embeddings(model), cached, atol=1e-6)


def test_archive_add_real_files_and_cli(trained, tmp_path):
    model, _ = trained
    model.save(tmp_path / "model")
    real = tmp_path / "real"
    real.mkdir()
    Image.fromarray(np.tile(np.linspace(0, 60000, 320), (200, 1)).astype(np.uint16)).save(real / "a.png")
    Image.fromarray(np.full((300, 180, 3), 90, np.uint8)).save(real / "b.jpg")
    (real / "b.txt").write_text("Lungs clear.")
    (real / "notes.md").write_text("not an image")

    parser = argparse.ArgumentParser()
    cxr_cli.register(parser.add_subparsers(dest="command", required=True))
    common = ["--archive", str(tmp_path / "arch"), "--model", str(tmp_path / "model")]
    args = parser.parse_args(["cxr-index", "--sim", "12", "--add", str(real), "--quiet", *common])
    assert args.func(args) == 0
    index = json.loads((tmp_path / "arch" / "index.json").read_text())["studies"]
    assert len(index) == 14
    files = [s for s in index if s["source"] == "file"]
    assert {s["report"] for s in files} == {None, "Lungs clear."}
    assert cxr_archive.add_images(real, root=tmp_path / "arch") == []  # same content: skipped
    assert np.load(tmp_path / "arch" / "embeddings.npy").shape == (14, model.embed_dim)

    args = parser.parse_args(["cxr-search", "bilateral infiltrates", "--top", "3", "--json", *common])
    assert args.func(args) == 0


def test_cli_search_json_output(trained, tmp_path, capsys):
    model, _ = trained
    model.save(tmp_path / "model")
    cxr_archive.build_sim_archive(10, seed=2, root=tmp_path / "arch")
    parser = argparse.ArgumentParser()
    cxr_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "cxr-search",
            "lungs clear",
            "--top",
            "4",
            "--json",
            "--archive",
            str(tmp_path / "arch"),
            "--model",
            str(tmp_path / "model"),
        ]
    )
    assert args.func(args) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and {"study_id", "score", "path", "report", "acquired_at", "patient_id"} <= set(hits[0])
    args = parser.parse_args(
        ["cxr-search", "x", "--archive", str(tmp_path / "empty"), "--model", str(tmp_path / "model")]
    )
    assert args.func(args) == 2


def test_archive_indexes_a_recorded_cxr_stream(trained, tmp_path):
    """X-rays that arrived on icu.cxr (an `icuwatch record` capture) become searchable; a malformed
    line is skipped, other topics ignored, a repeated study not added twice."""
    import base64

    from icuwatch.core import schemas
    from icuwatch.sources.simulator import cxr as sim_cxr

    png = sim_cxr.render(0.8, "diffuse", "right", np.random.default_rng(0))
    msg = schemas.Cxr(
        patient_id="p1",
        event_time=1.7e9,
        study_id="s-1",
        arrival_time=1.7e9 + 600,
        image_b64=base64.b64encode(png).decode(),
        report="Extensive bilateral diffuse opacities.",
    )

    def line(topic: str, value: bytes) -> str:
        return json.dumps(
            {
                "topic": topic,
                "partition": 0,
                "offset": 0,
                "key": base64.b64encode(b"p1").decode(),
                "value": base64.b64encode(value).decode(),
                "timestamp": 0,
                "event_time": 1.7e9,
            }
        )

    record = tmp_path / "cxr.jsonl"
    good = msg.model_dump_json().encode()
    record.write_text(
        "\n".join(
            [line("icu.cxr", good), line("icu.cxr", b"{not json"), line("icu.vitals", b"{}"), line("icu.cxr", good)]
        )
        + "\n"
    )
    archive = cxr_archive.CxrArchive(tmp_path / "arch")
    assert archive.add_recorded(record) == ["s-1"]
    assert archive.add_recorded(record) == []
    (study,) = archive.studies()
    assert study["source"] == "stream" and study["patient_id"] == "p1" and study["report"].startswith("Extensive")
    assert archive.path_of(study).read_bytes() == png
    assert archive.search(DIFFUSE_QUERY, top_k=1, model=trained[0])[0]["study_id"] == "s-1"
