"""Model roles set while the workers run (``storage/model_roles.py``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from icuwatch.core.errors import OperatorError
from icuwatch.storage import model_roles


def test_the_newest_row_per_role_is_in_force_and_promotion_moves_the_shadow_to_live(sessions) -> None:
    with sessions() as s:
        assert model_roles.current(s) == {}
    with sessions.begin() as s:
        model_roles.set_role(s, "shadow", "early_warning", "eng.ito")
        model_roles.set_role(s, "shadow", "student_physionet", "eng.ito", "the other one")
    with sessions() as s:
        assert model_roles.current(s) == {"shadow": "student_physionet"}
    with sessions.begin() as s:
        result = model_roles.promote_shadow(s, "eng.kim")
    assert result == {"live": "student_physionet", "was_live": None, "shadow": "", "by": "eng.kim"}
    with sessions() as s:
        assert model_roles.current(s) == {"live": "student_physionet", "shadow": ""}
        assert [(h["role"], h["model"], h["by"]) for h in model_roles.history(s)] == [
            ("shadow", "early_warning", "eng.ito"),
            ("shadow", "student_physionet", "eng.ito"),
            ("live", "student_physionet", "eng.kim"),
            ("shadow", "", "eng.kim"),
        ]
    with sessions.begin() as s, pytest.raises(OperatorError, match="no shadow model to promote"):
        model_roles.promote_shadow(s, "eng.kim")


def test_the_settings_shadow_is_promoted_when_no_row_names_one(sessions) -> None:
    with sessions.begin() as s:
        assert model_roles.promote_shadow(s, "eng.kim", shadow_default="early_warning")["live"] == "early_warning"
    with sessions.begin() as s, pytest.raises(OperatorError, match="unknown model role"):
        model_roles.set_role(s, "canary", "x", "eng.kim")
