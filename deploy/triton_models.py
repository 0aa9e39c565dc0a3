"""Model versions on the running tritonserver: list, promote, roll back (``icuwatch models``).

The local tritonserver runs with ``--model-control-mode=explicit`` and loads every model of its
repositories at start (``deploy/triton.py``); the repository's ``config.pbtxt`` decides the version
(``early_warning``: ``latest 1``, so version 2). A promotion switches the served version of one
model while workers keep running, through Triton's load API with a config override (the model's
own config, its ``version_policy`` replaced by ``specific``):

1. load the candidate beside the version(s) serving now (``specific [old..., new]``);
2. check it: one inference on a fixed input, addressed to that version (:func:`check`);
3. passed: load ``specific [new]``; Triton unloads the old version once its requests are done.

A candidate that does not load (no such version directory, an error in its initialisation) leaves
the model as it was: Triton keeps serving the loaded versions when a load fails. One that loads
but fails its check is unloaded again (``specific [old...]``), and :class:`SwitchFailed` (an
operator error: one line, exit 2) says so. Triton answers a request that names no version with the
highest ready version, so while a *higher* candidate is checked (a few milliseconds) it answers
the workers' requests too; their scores carry its version. A failed promotion leaves the old
version pinned (``specific``), so a repository whose ``latest`` policy now points at the bad
directory does not serve it.

Workers are not restarted: each inference response names the version that answered, and every
score carries it (``streams/scoring.py``).

History: ``<state_dir>/triton/model_versions.json``, per Triton address and model, a stack of the
versions pinned (``promote`` pushes, ``rollback`` pops back to the one before) and the last
:data:`MAX_EVENTS` actions (promotions and rollbacks, failed ones included, with their reason).
``deploy.triton.start`` pins the top of each stack again after a restart of the local server (the
load API's config override lives in the server's memory only).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from icuwatch.core import features, rules
from icuwatch.core.errors import OperatorError
from icuwatch.core.settings import Settings

log = logging.getLogger(__name__)

HISTORY_FILE = "model_versions.json"
REPOSITORIES_FILE = "repositories.json"
MAX_EVENTS = 50
MAX_STACK = 20
LOAD_TIMEOUT_S = 300.0
"""How long one load request may take (an exported fusion model's stub imports torch)."""
OPTIONAL_OUTPUTS = frozenset({features.CONTRIBUTIONS_OUTPUT})
"""Outputs a model may declare and not send (``early_warning`` version 1 behind the version-2
config): the worker then scores without them. Every other declared output must come back."""
RANGES: dict[str, tuple[float, float]] = {
    "DETERIORATION_RISK": (0.0, 1.0),
    "SEPSIS_RISK": (0.0, 1.0),
    "PROBABILITY": (0.0, 1.0),
    "NEWS2": (0, 20),
    "QSOFA": (0, 3),
    features.CONTRIBUTIONS_OUTPUT: (-1.0, 1.0),
}
"""Bounds of the outputs the worker reads (those of ``schemas.Score``)."""


class SwitchFailed(OperatorError):
    """A promotion or rollback that did not happen; the old version still serves."""


# ---------------------------------------------------------------------------------------- history


def history_path(settings: Settings) -> Path:
    return settings.state_dir / "triton" / HISTORY_FILE


def read_history(settings: Settings) -> dict[str, Any]:
    """``{triton address: {model: {"stack": [version, ...], "events": [...]}}}`` (empty when none)."""
    path = history_path(settings)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OperatorError(f"{path}: not a model version history ({exc})") from None
    if not isinstance(data, dict):
        raise OperatorError(f"{path}: not a model version history (expected an object)")
    return data


@contextmanager
def _locked_history(settings: Settings) -> Iterator[dict[str, Any]]:
    """The history, read under an exclusive lock (one promotion at a time per state directory) and
    written back atomically afterwards, also when the body raised (failed attempts are recorded)."""
    path = history_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_history(settings)
        try:
            yield data
        finally:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            os.replace(tmp, path)


def _entry(history: dict[str, Any], url: str, model: str) -> dict[str, Any]:
    entry = history.setdefault(url, {}).setdefault(model, {})
    entry.setdefault("stack", [])
    entry.setdefault("events", [])
    return entry


def _event(entry: dict[str, Any], action: str, to: int, served: list[int], ok: bool, reason: str | None) -> None:
    event: dict[str, Any] = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "to": to,
        "from": served,
        "ok": ok,
    }
    if reason is not None:
        event["reason"] = reason
    entry["events"] = [*entry["events"], event][-MAX_EVENTS:]


def record_repositories(settings: Settings, repositories: list[Path]) -> None:
    """Note which repositories the local tritonserver serves (``models list`` reads their version
    directories; the server's own index names only the versions it has tried to load)."""
    path = settings.state_dir / "triton" / REPOSITORIES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": settings.triton_url, "repositories": [str(p) for p in repositories]}) + "\n")


def _local_version_dirs(settings: Settings) -> dict[str, list[int]]:
    """Version directories per model in the repositories the local server was started with (empty
    when it was not started here, or with another address)."""
    try:
        data = json.loads((settings.state_dir / "triton" / REPOSITORIES_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if data.get("url") != settings.triton_url:
        return {}
    out: dict[str, list[int]] = {}
    for repo in data.get("repositories", []):
        root = Path(repo)
        if not root.is_dir():
            continue
        for model in sorted(p for p in root.iterdir() if p.is_dir()):
            versions = sorted(int(v.name) for v in model.iterdir() if v.is_dir() and v.name.isdigit())
            out[model.name] = versions
    return out


# ----------------------------------------------------------------------------------------- server


def _reason(exc: BaseException) -> str:
    """Triton's message, first line (a python-backend error carries its traceback after it)."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    lines = (text or "").strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def connect(settings: Settings):
    """A gRPC client of the tritonserver at ``settings.triton_url``; an operator error when it does
    not answer."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(settings.triton_url)
    try:
        live = client.is_server_live(client_timeout=max(settings.triton_timeout_s, 5.0))
    except InferenceServerException as exc:
        raise OperatorError(f"tritonserver at {settings.triton_url} does not answer ({_reason(exc)})") from None
    if not live:
        raise OperatorError(f"tritonserver at {settings.triton_url} is not live")
    return client


@contextmanager
def _server_errors(settings: Settings) -> Iterator[None]:
    """A Triton error not handled where it happened (the server went away mid-way) as one line."""
    from tritonclient.utils import InferenceServerException

    try:
        yield
    except InferenceServerException as exc:
        raise OperatorError(f"tritonserver at {settings.triton_url}: {_reason(exc)}") from None


def _index(client) -> list[dict[str, Any]]:
    return list(client.get_model_repository_index(as_json=True).get("models", []))


def ready_versions(client, model: str) -> list[int]:
    """The versions of ``model`` the server has READY, ascending."""
    return sorted(
        int(m["version"])
        for m in _index(client)
        if m.get("name") == model and m.get("state") == "READY" and str(m.get("version", "")).isdigit()
    )


def _config(client, settings: Settings, model: str) -> dict[str, Any]:
    from tritonclient.utils import InferenceServerException

    try:
        return dict(client.get_model_config(model, as_json=True)["config"])
    except InferenceServerException as exc:
        raise OperatorError(f"cannot read the config of {model!r} on {settings.triton_url} ({_reason(exc)})") from None


def _load(client, model: str, base: dict[str, Any], versions: list[int]) -> None:
    config = {**base, "version_policy": {"specific": {"versions": sorted(set(versions))}}}
    client.load_model(model, config=json.dumps(config), client_timeout=LOAD_TIMEOUT_S)


def _versions_text(versions: list[int]) -> str:
    if not versions:
        return "no version"
    return ("version " if len(versions) == 1 else "versions ") + ", ".join(map(str, versions))


# ------------------------------------------------------------------------------------------ check


def check_rows() -> np.ndarray:
    """The fixed input of the check of a feature-row model: no data, a stable patient, a septic and
    deteriorating one (``core.features`` layout)."""
    x = features.empty(3)
    stable = dict(hr=75, spo2=97, rr=14, sbp=120, map=85, temp=37.0, o2_supplement=0, altered_mentation=0)
    sick = dict(
        hr=125, spo2=90, rr=26, sbp=88, map=60, temp=38.9, o2_supplement=1, altered_mentation=1, lactate=3.1, wbc=15.0
    )
    for i, values in ((1, stable), (2, sick)):
        for name, value in values.items():
            x[i, features.INDEX[name]] = value
        for name in ("stale_vitals_s", "stale_labs_s", "stale_waveforms_s", "stale_cxr_s"):
            x[i, features.INDEX[name]] = 0.0
    return x


def _check_inputs(meta: dict[str, Any]) -> tuple[int, list[tuple[str, str, np.ndarray]]]:
    """(rows, [(name, datatype, array)]) for one check inference: the fixed feature rows for a model
    of ``FEATURES`` (the rule-model family), else zeros shaped by the model's metadata (2 rows)."""
    inputs = meta.get("inputs", [])
    if [(i["name"], i["datatype"]) for i in inputs] == [("FEATURES", "FP32")]:
        x = check_rows()
        return len(x), [("FEATURES", "FP32", x)]
    from tritonclient.utils import triton_to_np_dtype

    n, out = 2, []
    for i in inputs:
        dims = [int(d) for d in i["shape"]]
        shape = [n if k == 0 and d < 0 else max(d, 1) for k, d in enumerate(dims)]
        dtype = triton_to_np_dtype(i["datatype"])
        if dtype is None or dtype is np.object_:
            raise SwitchFailed(f"cannot build a check input {i['name']} of type {i['datatype']}")
        out.append((i["name"], i["datatype"], np.zeros(shape, dtype=dtype)))
    return n, out


def check(client, model: str, version: int) -> dict[str, Any]:
    """One inference addressed to ``version`` of ``model`` on a fixed input. Every declared output
    (but :data:`OPTIONAL_OUTPUTS`) must come back with a row per input row, finite, within
    :data:`RANGES`; a feature-row model's NEWS2 and qSOFA must equal ``core.rules``' (every score
    carries the rule scores, and the fallback computes them the same way). Returns
    ``{"version", "rows", "outputs", "problems"}``; no problems: passed."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    problems: list[str] = []
    try:
        meta = client.get_model_metadata(model, str(version), as_json=True)
    except InferenceServerException as exc:
        return {"version": version, "rows": 0, "outputs": [], "problems": [f"no metadata ({_reason(exc)})"]}
    n, arrays = _check_inputs(meta)
    inputs = []
    for name, datatype, arr in arrays:
        inp = grpcclient.InferInput(name, list(arr.shape), datatype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    names = [o["name"] for o in meta.get("outputs", [])]
    try:
        result = client.infer(
            model,
            inputs,
            model_version=str(version),
            outputs=[grpcclient.InferRequestedOutput(o) for o in names],
            client_timeout=60.0,
        )
    except InferenceServerException as exc:
        return {"version": version, "rows": n, "outputs": [], "problems": [f"inference failed ({_reason(exc)})"]}
    answered = str(result.get_response().model_version)
    if answered != str(version):
        problems.append(f"answered by version {answered}")
    returned = []
    for name in names:
        arr = result.as_numpy(name)
        if arr is None:
            if name not in OPTIONAL_OUTPUTS:
                problems.append(f"no {name}")
            continue
        returned.append(name)
        if arr.ndim == 0 or arr.shape[0] != n:
            problems.append(f"{name} has shape {list(arr.shape)} for {n} rows")
            continue
        if arr.dtype.kind in "fiu":
            values = arr.astype(np.float64)
            if not np.isfinite(values).all():
                problems.append(f"{name} is not finite")
            elif name in RANGES and not ((values >= RANGES[name][0]) & (values <= RANGES[name][1])).all():
                lo, hi = RANGES[name]
                problems.append(f"{name} outside [{lo:g}, {hi:g}]")
    if arrays[0][0] == "FEATURES" and not problems:
        x = arrays[0][2]
        for name, expected in (("NEWS2", rules.news2(x)), ("QSOFA", rules.qsofa(x))):
            got = result.as_numpy(name)
            if got is not None and not np.array_equal(got.reshape(-1), expected.reshape(-1)):
                problems.append(f"{name} {got.reshape(-1).tolist()} where the rules give {expected.tolist()}")
    return {"version": version, "rows": n, "outputs": returned, "problems": problems}


# ---------------------------------------------------------------------------------------- actions


def _switch(client, settings: Settings, model: str, target: int) -> dict[str, Any]:
    """Serve ``target`` (and only it) of ``model``: load beside the current version(s), check, then
    unload the others; :class:`SwitchFailed` with the old version(s) still serving otherwise."""
    from tritonclient.utils import InferenceServerException

    index = _index(client)
    names = sorted({m["name"] for m in index})
    if model not in names:
        raise OperatorError(f"no model {model!r} on tritonserver at {settings.triton_url} (it has: {', '.join(names)})")
    current = ready_versions(client, model)
    if not current:
        raise OperatorError(f"model {model!r} is not loaded on tritonserver at {settings.triton_url}")
    base = _config(client, settings, model)
    if target not in current:
        try:
            _load(client, model, base, [*current, target])
            failure = None
        except InferenceServerException as exc:
            failure = _reason(exc)
            if "not allowed" in failure:  # model control mode none or poll
                raise SwitchFailed(
                    f"tritonserver at {settings.triton_url} does not load models on request ({failure}): "
                    f"start it with --model-control-mode=explicit; {_versions_text(current)} still serving"
                ) from None
        if target not in ready_versions(client, model):
            # Not loaded: an error (the old versions were kept), or no such directory (Triton loads
            # the versions that exist and skips the missing one): pin the old ones again.
            states = [m for m in _index(client) if m.get("name") == model and str(m.get("version")) == str(target)]
            if failure is None:
                _load(client, model, base, current)
                failure = (
                    str(states[0].get("reason", "not ready")).strip().splitlines()[0]
                    if states
                    else f"tritonserver has no version {target} of {model} in its repository"
                )
            raise SwitchFailed(
                f"version {target} of {model} did not load ({failure}); "
                f"{_versions_text(ready_versions(client, model))} still serving"
            )
    report = check(client, model, target)
    if report["problems"]:
        if target not in current:
            _load(client, model, base, current)
        problems = "; ".join(report["problems"][:3])
        raise SwitchFailed(
            f"version {target} of {model} failed its check ({problems}); "
            f"{_versions_text(ready_versions(client, model))} still serving"
        )
    try:
        _load(client, model, base, [target])  # pins it (also when it was serving under the repository's policy)
    except InferenceServerException as exc:
        raise SwitchFailed(
            f"version {target} of {model} passed its check but the switch failed ({_reason(exc)}); "
            f"{_versions_text(ready_versions(client, model))} serving"
        ) from None
    return {
        "model": model,
        "version": target,
        "previous": current,
        "serving": ready_versions(client, model),
        "check": report,
    }


def _parse_version(version: str | int) -> int:
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise OperatorError(f"a model version is a positive whole number (a directory of the model), not {version!r}")
    return int(text)


def promote(settings: Settings, model: str, version: str | int) -> dict[str, Any]:
    """Serve ``version`` of ``model`` on the running tritonserver (see the module docstring)."""
    target = _parse_version(version)
    client = connect(settings)
    with _locked_history(settings) as history, _server_errors(settings):
        served = ready_versions(client, model)
        try:
            result = _switch(client, settings, model, target)
        except SwitchFailed as exc:
            _event(_entry(history, settings.triton_url, model), "promote", target, served, False, str(exc))
            raise
        entry = _entry(history, settings.triton_url, model)
        stack: list[int] = entry["stack"]
        if len(served) == 1 and (not stack or stack[-1] != served[0]):
            stack.append(served[0])  # what served before, also after a restart that lost a pin
        if not stack or stack[-1] != target:
            stack.append(target)
        entry["stack"] = stack[-MAX_STACK:]
        _event(entry, "promote", target, served, True, None)
        result["history"] = list(entry["stack"])
    return result


def rollback(settings: Settings, model: str) -> dict[str, Any]:
    """Serve the version pinned before the current one (the history's stack, popped)."""
    client = connect(settings)
    with _locked_history(settings) as history, _server_errors(settings):
        if len(history.get(settings.triton_url, {}).get(model, {}).get("stack", [])) < 2:
            raise OperatorError(
                f"no earlier version of {model} to roll back to on {settings.triton_url} "
                "(`icuwatch models promote` keeps the history)"
            )
        entry = _entry(history, settings.triton_url, model)
        stack: list[int] = entry["stack"]
        target = stack[-2]
        served = ready_versions(client, model)
        try:
            result = _switch(client, settings, model, target)
        except SwitchFailed as exc:
            _event(entry, "rollback", target, served, False, str(exc))
            raise
        entry["stack"] = stack[:-1]
        _event(entry, "rollback", target, served, True, None)
        result["history"] = list(entry["stack"])
    return result


def list_models(settings: Settings) -> dict[str, Any]:
    """Every model of the server's repository index: its versions with their state (and the reason
    of a failed load), the version(s) serving, the version policy in force, the version directories
    of the local repositories, and this state directory's pin and history. (Not the version policy:
    Triton reports the config a version was loaded with, stale after a switch to a loaded version.)"""
    client = connect(settings)
    history = read_history(settings).get(settings.triton_url, {})
    on_disk = _local_version_dirs(settings)
    models: dict[str, dict[str, Any]] = {}
    with _server_errors(settings):
        index = _index(client)
    for m in index:
        info = models.setdefault(m["name"], {"versions": {}, "serving": []})
        version = str(m.get("version", ""))
        if version:
            state = {"state": m.get("state", "")}
            if m.get("reason"):
                state["reason"] = str(m["reason"]).strip().splitlines()[0]
            info["versions"][version] = state
            if m.get("state") == "READY":
                info["serving"].append(int(version))
    for name, info in sorted(models.items()):
        info["serving"].sort()
        info["versions"] = dict(sorted(info["versions"].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0))
        if name in on_disk:
            info["repository_versions"] = on_disk[name]
        entry = history.get(name)
        if entry:
            info["pinned"] = entry["stack"][-1] if entry.get("stack") else None
            info["history"] = entry.get("stack", [])
            info["last_event"] = entry["events"][-1] if entry.get("events") else None
    return {"triton": settings.triton_url, "models": dict(sorted(models.items()))}


def reapply_pins(settings: Settings) -> list[str]:
    """After the local tritonserver (re)started: serve each model's pinned version again (the top
    of its history). A pin that cannot be served is logged and left; the repository's policy then
    serves. Returns one line per model switched or not."""
    entries = read_history(settings).get(settings.triton_url, {})
    pins = {model: e["stack"][-1] for model, e in entries.items() if e.get("stack")}
    if not pins:
        return []
    lines = []
    for model, version in sorted(pins.items()):
        try:  # a pin that cannot be served must not stop the server's start
            client = connect(settings)
            if ready_versions(client, model) == [version]:
                continue
            _switch(client, settings, model, version)
            lines.append(f"{model}: version {version} pinned again")
        except Exception as exc:
            reason = _reason(exc) if not isinstance(exc, OperatorError) else str(exc)
            lines.append(f"{model}: pinned version {version} not served ({reason})")
            log.warning("model %s: pinned version %s not served again: %s", model, version, reason)
    return lines


def describe(listing: dict[str, Any]) -> str:
    """``list_models`` as a table for a person."""
    rows = [("MODEL", "SERVING", "VERSIONS", "PINNED (HISTORY)")]
    for name, info in listing["models"].items():
        versions = ", ".join(
            f"{v} {s['state'].lower() or '-'}" + (f" ({s['reason']})" if s.get("reason") else "")
            for v, s in info["versions"].items()
        )
        if info.get("repository_versions"):
            versions += f"; in repository: {', '.join(map(str, info['repository_versions']))}"
        pinned = info.get("pinned")
        hist = f"{pinned} ({' > '.join(map(str, info.get('history', [])))})" if pinned is not None else "-"
        serving = ", ".join(map(str, info["serving"])) or "none"
        rows.append((name, serving, versions or "-", hist))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"tritonserver at {listing['triton']}"]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines)
