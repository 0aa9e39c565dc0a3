"""An export of new weights writes the next version and keeps the one before for rollback."""

from __future__ import annotations

import json
from pathlib import Path

from icuwatch.serving.export import PROVENANCE, _version_to_write, newest_version_dir, versions

INTERFACE = {"inputs": {"VITALS": [8, 14]}, "input_dtypes": {"VITALS": "FP32"}, "outputs": ["PROBABILITY", "EXIT"]}


def _exported(model_dir: Path, version: int, sha: str, interface: dict = INTERFACE) -> None:
    (model_dir / str(version)).mkdir(parents=True)
    (model_dir / str(version) / PROVENANCE).write_text(json.dumps({"source_sha256": sha, **interface}))


def test_the_first_export_is_version_1(tmp_path):
    assert _version_to_write(tmp_path / "m", "aaa", INTERFACE) == (tmp_path / "m" / "1", [])
    assert newest_version_dir(tmp_path / "m") == tmp_path / "m" / "1" and versions(tmp_path / "m") == []


def test_new_weights_get_the_next_version_and_the_old_one_stays(tmp_path):
    _exported(tmp_path, 1, "aaa")
    _exported(tmp_path, 2, "bbb")
    assert _version_to_write(tmp_path, "ccc", INTERFACE) == (tmp_path / "3", [])
    assert newest_version_dir(tmp_path) == tmp_path / "2" and versions(tmp_path) == [1, 2]


def test_the_same_weights_exported_again_replace_their_own_version(tmp_path):
    _exported(tmp_path, 1, "aaa")
    _exported(tmp_path, 2, "bbb")
    assert _version_to_write(tmp_path, "bbb", INTERFACE) == (tmp_path / "2", [])


def test_versions_whose_inputs_differ_cannot_share_the_config_and_are_removed(tmp_path):
    old = {**INTERFACE, "input_dtypes": {"VITALS": "FP16"}}
    _exported(tmp_path, 1, "aaa", old)
    _exported(tmp_path, 2, "bbb")
    assert _version_to_write(tmp_path, "ccc", INTERFACE) == (tmp_path / "3", [tmp_path / "1"])


def test_a_student_version_with_another_normalisation_cannot_stay_for_rollback(tmp_path):
    student = {**INTERFACE, "norm": {"vitals": [[0.0, 1.0]]}}
    _exported(tmp_path, 1, "aaa", {**student, "norm": {"vitals": [[5.0, 2.0]]}})
    _exported(tmp_path, 2, "bbb", student)
    assert _version_to_write(tmp_path, "ccc", student) == (tmp_path / "3", [tmp_path / "1"])
