"""Patient identity (issue 18): a hospital identifier becomes the v1 patient id exactly, or is
refused saying what is wrong; never rewritten, so two identifiers never become one patient."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from icuwatch.core import schemas
from icuwatch.core.schemas import SchemaError, check_patient_id


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("MRN-1001", "MRN-1001"),
        ("MRN.1001", "MRN.1001"),
        ("mrn_1001", "mrn_1001"),
        ("  00042  ", "00042"),  # DICOM and HL7 pad with spaces
        ("x" * 64, "x" * 64),
    ],
)
def test_valid_identifiers_are_kept_exactly(raw, expected):
    assert check_patient_id(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        ("MRN 1001", "patient identifier has ' ' at position 4 (allowed: letters, digits, '_', '.', '-')"),
        ("MRN/1001", "patient identifier has '/' at position 4 (allowed: letters, digits, '_', '.', '-')"),
        ("MRN:1001/7", "has ':' at position 4"),  # the first one
        ("  Zoë1", "has 'ë' at position 3"),  # positions count in the stripped identifier
        ("MRN\t1", "has '\\t' at position 4"),
        ("MRN\\1", "has '\\\\' at position 4"),
        ("١٢٣", "has '١' at position 1"),  # digits, but not ASCII ones
        ("x" * 65, "patient identifier is 65 characters, at most 64"),
        ("", "patient identifier is empty"),
        ("    ", "patient identifier is empty"),
        (None, "patient identifier is empty"),
    ],
)
def test_unusable_identifiers_are_refused_saying_what_is_wrong(raw, reason):
    with pytest.raises(SchemaError) as exc:
        check_patient_id(raw)
    assert reason in exc.value.reason
    if raw and raw.strip():
        assert raw.strip() not in exc.value.reason  # never echoes the identifier


def test_the_issue_reproduction_no_longer_merges_two_patients():
    """``MRN 1001`` and ``MRN/1001`` both became ``MRN_1001``; now neither is accepted."""
    for raw in ("MRN 1001", "MRN/1001"):
        with pytest.raises(SchemaError):
            check_patient_id(raw)
    assert check_patient_id("MRN-1001") != check_patient_id("MRN.1001")


@given(st.text(max_size=80), st.text(max_size=80))
def test_two_different_identifiers_never_become_one_id(a, b):
    try:
        pa, pb = check_patient_id(a), check_patient_id(b)
    except SchemaError:
        return
    assert pa == a.strip(" ") and pb == b.strip(" ")  # every accepted id is the stripped input
    assert (pa == pb) == (a.strip(" ") == b.strip(" "))


@given(st.text(max_size=80))
def test_accepted_exactly_when_the_schema_accepts_it(raw):
    """check_patient_id accepts what the v1 schemas' id pattern accepts, and nothing else."""
    stripped = raw.strip(" ")
    try:
        pid = check_patient_id(raw)
    except SchemaError as exc:
        assert re.fullmatch(schemas.PATIENT_ID_PATTERN, stripped) is None, exc.reason
        return
    assert pid == stripped and re.fullmatch(schemas.PATIENT_ID_PATTERN, pid)
    schemas.Vitals(patient_id=pid, event_time=1.7e9, hr=80)  # and the messages take it


@given(st.from_regex(schemas.PATIENT_ID_PATTERN, fullmatch=True), st.text(" ", max_size=3), st.text(" ", max_size=3))
def test_every_valid_id_survives_padding(pid, left, right):
    assert check_patient_id(left + pid + right) == pid
