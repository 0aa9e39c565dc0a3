"""Per-unit thresholds, versioned (``storage/unit_thresholds.py``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from icuwatch.core.errors import OperatorError
from icuwatch.storage import unit_thresholds as ut


def test_each_tuning_is_a_new_active_version_and_rollbacks_go_back_one_at_a_time(sessions) -> None:
    with sessions.begin() as s:
        assert ut.record(s, "MICU", "sepsis", "student_live", 0.05, "eng.ito", {"sensitivity": 0.8}) == 1
        assert ut.record(s, "MICU", "sepsis", "student_live", 0.08, "eng.ito", {"sensitivity": 0.7}) == 2
        ut.record(s, "SICU", "sepsis", "student_live", 0.02, "eng.ito", {})
        ut.record(s, "MICU", "sepsis", "early_warning", 0.6, "eng.ito", {})
    with sessions() as s:
        assert ut.active(s, "student_live") == {("MICU", "sepsis"): 0.08, ("SICU", "sepsis"): 0.02}
    with sessions.begin() as s:
        back = ut.rollback(s, "MICU", "sepsis", "student_live", "eng.kim")
    assert back == {
        "unit": "MICU", "kind": "sepsis", "model": "student_live", "threshold": 0.05, "version": 3,
        "rolled_back": 2, "restores": 1,
    }  # fmt: skip
    with sessions() as s:
        assert ut.active(s, "student_live")[("MICU", "sepsis")] == 0.05
    with sessions.begin() as s:  # again: before version 1 there was none -> the model's own threshold
        again = ut.rollback(s, "MICU", "sepsis", "student_live", "eng.kim")
    assert (again["threshold"], again["version"], again["restores"]) == (None, 4, None)
    with sessions() as s:
        assert ("MICU", "sepsis") not in ut.active(s, "student_live")
        log = ut.history(s, "MICU")
    assert [(e["model"], e["version"], e["threshold"], e["active"], e["by"]) for e in log] == [
        ("early_warning", 1, 0.6, True, "eng.ito"),
        ("student_live", 1, 0.05, False, "eng.ito"),
        ("student_live", 2, 0.08, False, "eng.ito"),
        ("student_live", 3, 0.05, False, "eng.kim"),
        ("student_live", 4, None, True, "eng.kim"),  # the step back to the model's own, audited
    ]
    with sessions.begin() as s, pytest.raises(OperatorError, match="nothing to roll back"):
        ut.rollback(s, "MICU", "sepsis", "student_live", "eng.kim")


def test_a_rollback_after_a_tuning_that_followed_a_rollback_does_not_bring_back_a_rolled_back_value(sessions) -> None:
    with sessions.begin() as s:
        for t in (0.05, 0.08):
            ut.record(s, "MICU", "sepsis", "m", t, "eng.ito", {})
        ut.rollback(s, "MICU", "sepsis", "m", "eng.ito")  # v3 = 0.05
        ut.record(s, "MICU", "sepsis", "m", 0.11, "eng.ito", {})  # v4
        assert ut.rollback(s, "MICU", "sepsis", "m", "eng.ito")["threshold"] == 0.05  # v5: what v4 replaced
        assert ut.rollback(s, "MICU", "sepsis", "m", "eng.ito")["threshold"] is None  # not 0.08 (rolled back)
