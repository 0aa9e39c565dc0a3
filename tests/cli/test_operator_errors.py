"""Operator errors (issue 18): every command fails with one line on stderr naming the path, line, port
or topic, and a non-zero exit; commands over many files go on with the others and report them; a
traceback only with ``icuwatch --debug``. No broker is needed: every check comes before connecting."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stack_fixtures import free_port

from icuwatch.cli.main import main
from icuwatch.core.errors import BadFile, OperatorError, is_operator_error
from icuwatch.core.settings import get_settings
from icuwatch.sources.physionet import read_psv

pytestmark = pytest.mark.timeout(120)  # a check that regressed behind a broker connection hangs, not fails

ICUWATCH = Path(sys.executable).parent / "icuwatch"
COLUMNS = ("HR", "O2Sat", "Temp", "SBP", "MAP", "Resp", "Age", "Gender", "HospAdmTime", "ICULOS", "SepsisLabel")


def write_stay(folder: Path, pid: str, hours: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["|".join(COLUMNS)]
    rows += [f"{80 + h}|97|37.0|120|85|16|60|1|-1|{h}|{int(h > 5)}" for h in range(1, hours + 1)]
    path = folder / f"{pid}.psv"
    path.write_text("\n".join(rows) + "\n")
    return path


def write_ragged(folder: Path, pid: str) -> Path:
    """A stay whose line 4 has two values: the defect's malformed ``.psv``."""
    path = write_stay(folder, pid)
    lines = path.read_text().splitlines()
    lines[3] = "81|97"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def no_broker(tmp_path, monkeypatch):
    """Settings with a state folder of the test's and a broker address nothing listens on."""
    monkeypatch.setenv("ICUWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ICUWATCH_BROKER", f"127.0.0.1:{free_port()}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class FakeProducer:
    """Stands in for the broker where a command gets past its checks (what is sent is not the point)."""

    def __init__(self):
        self.sent = []

    def send(self, topic, key=None, value=None, partition=None):
        self.sent.append((topic, key, value))

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# ---------------------------------------------------------------- the defects reproduced


def test_replay_psv_of_a_missing_folder(tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    assert main(["replay", "psv", str(missing), "--quiet"]) == 2
    one_error_line(capsys, str(missing), "no such folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["replay", "psv", str(empty), "--quiet"]) == 2
    one_error_line(capsys, str(empty), "no pNNNNNN.psv")


def test_replay_psv_goes_on_past_a_malformed_stay(tmp_path, capsys, monkeypatch):
    producer = FakeProducer()
    monkeypatch.setattr("icuwatch.cli.replay._producer", lambda: producer)
    for pid in ("p000001", "p000003"):
        write_stay(tmp_path / "in", pid)
    bad = write_ragged(tmp_path / "in", "p000002")
    assert main(["replay", "psv", str(tmp_path / "in"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    counts = json.loads(out)
    assert (
        counts["stays"] == 2
        and counts["failed"] == 1
        and counts["failed_files"] == [f"{bad}:4: 2 values, the header has 11"]
    )
    assert {k for _, k, _ in producer.sent} == {b"p000001", b"p000003"}
    assert (
        "Traceback" not in err and len(err.strip().splitlines()) == 1 and f"{bad}:4" in err and "1 file failed" in err
    )


def test_psv_predict_goes_on_past_a_malformed_stay(tmp_path, capsys):
    for pid in ("p000001", "p000003"):
        write_stay(tmp_path / "in", pid)
    bad = write_ragged(tmp_path / "in", "p000002")
    (tmp_path / "in" / "p000004.psv").write_bytes(b"\xff\xfe\x00binary")
    assert main(["psv-predict", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["stays"] == 2 and summary["failed"] == 2
    assert summary["failed_files"] == [
        f"{bad}:4: 2 values, the header has 11",
        f"{tmp_path / 'in' / 'p000004.psv'}: not a text file",
    ]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p000001.psv", "p000003.psv"]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and f"{bad}:4" in err and "2 files" in err


def test_psv_predict_of_a_missing_folder(tmp_path, capsys):
    assert main(["psv-predict", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--quiet"]) == 2
    one_error_line(capsys, str(tmp_path / "nowhere"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["shadow", "offline", "--a", "rules", "--b", "news2", "{}", "--quiet"],
        ["tune-thresholds", "--data", "{}", "--quiet"],
    ],
)
def test_other_stay_commands_of_a_missing_folder(tmp_path, capsys, argv):
    missing = str(tmp_path / "nowhere")
    assert main([missing if a == "{}" else a for a in argv]) == 2
    one_error_line(capsys, missing, "no such folder")


def test_replay_wfdb_of_a_missing_or_malformed_record(tmp_path, capsys):
    assert main(["replay", "wfdb", str(tmp_path / "nope"), "--quiet"]) == 2
    one_error_line(capsys, str(tmp_path / "nope.hea"), "No such file")
    (tmp_path / "junk.hea").write_text("this is not\na header\n")
    assert main(["replay", "wfdb", str(tmp_path / "junk.hea"), "--quiet"]) == 2
    one_error_line(capsys, str(tmp_path / "junk.hea"), "not a WFDB header")


def test_replay_file_of_a_missing_or_malformed_archive(tmp_path, capsys, monkeypatch):
    assert main(["replay", "file", str(tmp_path / "nope.jsonl"), "--quiet"]) == 2
    one_error_line(capsys, str(tmp_path / "nope.jsonl"), "No such file")
    producer = FakeProducer()
    monkeypatch.setattr("icuwatch.cli.replay._producer", lambda: producer)
    good = {"topic": "icu.vitals", "partition": 0, "offset": 0, "key": None, "value": None, "event_time": 1.0}
    archive = tmp_path / "archive.jsonl"
    archive.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n" + '{"topic": "icu.vitals", "par\n')
    assert main(["replay", "file", str(archive), "--quiet"]) == 2
    one_error_line(capsys, f"{archive}:3", "not an archive line")
    assert producer.sent == []  # checked through before sending anything


def test_record_of_an_unknown_topic(tmp_path, capsys):
    out = tmp_path / "rec.jsonl"
    started = time.monotonic()
    assert main(["record", "icu.vitals", "icu.vitalz", "--out", str(out), "--seconds", "1", "--quiet"]) == 2
    line = one_error_line(capsys, "'icu.vitalz'", "icu.vitals, icu.waveforms")
    assert "'icu.vitals'" not in line and time.monotonic() - started < 5 and not out.exists()


@pytest.mark.parametrize("command", ["hl7-listen", "dicom-listen", "serve"])
def test_listener_on_a_busy_port(command, capsys):
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert main([command, "--host", "127.0.0.1", "--port", str(port)]) == 2
    one_error_line(capsys, f"port {port}", "in use")


def test_evaluate_checks_its_folders_before_predicting(tmp_path, capsys):
    for i in range(1, 4):
        write_stay(tmp_path / "labels", f"p00000{i}")
    started = time.monotonic()
    rc = main(["evaluate", str(tmp_path / "nonexistent"), str(tmp_path / "labels"), "--out", str(tmp_path / "out")])
    assert rc == 2 and time.monotonic() - started < 5
    one_error_line(capsys, str(tmp_path / "nonexistent"), "does not exist")
    assert not (tmp_path / "out").exists()  # no baseline predicted
    assert main(["evaluate", str(tmp_path / "labels"), str(tmp_path / "none"), "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys, str(tmp_path / "none"))


def test_evaluate_goes_on_past_malformed_files(tmp_path, capsys):
    for i in range(1, 5):
        write_stay(tmp_path / "labels", f"p00000{i}")
        write_stay(tmp_path / "pred", f"p00000{i}")  # rewritten below as predictions
    bad_label = write_ragged(tmp_path / "labels", "p000002")
    for i in range(1, 5):
        (tmp_path / "pred" / f"p00000{i}.psv").write_text("PredictedProbability|PredictedLabel\n" + "0.2|0\n" * 8)
    bad_pred = tmp_path / "pred" / "p000003.psv"
    bad_pred.write_text("PredictedProbability|PredictedLabel\n" + "0.2|0\n" * 7)
    argv = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "labels"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--baselines", "none", "--json", "--quiet", "--no-figures"]) == 1
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["patients"] == 2 and summary["failed"] == 2
    assert any(f.startswith(f"{bad_label}:4") for f in summary["failed_files"])
    assert any(f.startswith(f"{bad_pred}: 7 prediction rows") for f in summary["failed_files"])
    assert "2 selected stays left out" in summary["data_note"]
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and "2 files failed" in err


# ---------------------------------------------------------------- --debug, the installed command, real bugs


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(OperatorError, match="no such folder"):
        main(["--debug", "replay", "psv", str(tmp_path / "nonexistent")])


def test_installed_command(tmp_path):
    env = {**os.environ, "ICUWATCH_BROKER": f"127.0.0.1:{free_port()}", "ICUWATCH_STATE_DIR": str(tmp_path)}
    missing = str(tmp_path / "nonexistent")
    run = subprocess.run([ICUWATCH, "replay", "psv", missing], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.strip() == f"icuwatch replay: {missing}: no such folder"
    run = subprocess.run(
        [ICUWATCH, "--debug", "replay", "psv", missing], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1 and "Traceback" in run.stderr and "OperatorError" in run.stderr


def test_only_operator_errors_are_one_line():
    assert is_operator_error(OperatorError("x")) and is_operator_error(BadFile("f.psv", "bad", line=3))
    assert is_operator_error(FileNotFoundError(errno.ENOENT, "No such file", "f"))
    assert is_operator_error(PermissionError(errno.EACCES, "Permission denied", "f"))
    assert is_operator_error(OSError(errno.EADDRINUSE, "address already in use"))
    for bug in (ValueError("x"), KeyError("x"), RuntimeError("x"), ConnectionRefusedError(errno.ECONNREFUSED, "x")):
        assert not is_operator_error(bug)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(2, 30), data=st.data())
def test_a_ragged_row_is_named_by_its_line(tmp_path_factory, rows, data):
    from icuwatch.sources.psv import _quick_span

    folder = tmp_path_factory.mktemp("ragged")
    path = write_stay(folder, "p000001", hours=rows)
    bad = data.draw(st.integers(2, rows + 1), label="line")
    lines = path.read_text().splitlines()
    lines[bad - 1] = "|".join(lines[bad - 1].split("|")[: data.draw(st.integers(1, len(COLUMNS) - 1))])
    path.write_text("\n".join(lines) + "\n")
    for reader in (read_psv, _quick_span):
        with pytest.raises(BadFile) as exc:
            reader(path)
        assert exc.value.line == bad and str(exc.value).startswith(f"{path}:{bad}: ")
