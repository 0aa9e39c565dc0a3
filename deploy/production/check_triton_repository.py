"""Build-time check of the Triton image (``triton.Dockerfile``), run by the container's own Python.

    python3 check_triton_repository.py --torch 2.13.0 /models /models-fusion

The repositories are the ones tritonserver is started with (``--model-repository`` each). Checks:

* the installed torch is the pinned release (TorchScript files are tied to the torch that wrote them);
* no model name appears in two repositories (tritonserver would refuse to start);
* every model exported by ``icuwatch export-triton`` (a model directory whose newest version holds
  ``model.pt``): ``config.pbtxt`` (python backend), ``model.py`` and ``export.json`` are there, the
  export was written by the pinned torch release, and ``model.pt`` loads with ``torch.jit.load`` and
  answers a two-row batch of its config's inputs (zeros, every modality present) with finite
  probabilities in [0, 1] and one exit per row: what ``model.py`` does in the python backend.

Needs numpy and torch only (what the exported ``model.py`` imports), not icuwatch. Kept to Python 3.10
(the Triton 24.10 container's interpreter). An empty repository passes with a note, so a rules-only
image can be built from an empty directory (OPERATIONS.md).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

TORCHSCRIPT = "model.pt"
PROVENANCE = "export.json"
INPUT = re.compile(r'\{\s*name:\s*"(\w+)",\s*data_type:\s*(TYPE_\w+),\s*dims:\s*\[([\d,\s-]*)\]\s*\}')
DTYPES = {
    "TYPE_FP32": "float32",
    "TYPE_BOOL": "bool",
    "TYPE_INT64": "int64",
    "TYPE_INT32": "int32",
    "TYPE_UINT8": "uint8",
}
WIRE = re.compile(r'key:\s*"wire_uint8",\s*value:\s*\{\s*string_value:\s*"([^"]*)"')
"""The UINT8 inputs the python backend turns back into float32 for the TorchScript (``CXR:255``)."""


def release(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0`` (the CPU and CUDA builds of one release read the same files)."""
    return version.split("+", 1)[0]


def models(repository: Path) -> list[Path]:
    """Model directories of a repository (Triton ignores plain files there)."""
    return sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))


def newest_version(model: Path) -> Path | None:
    versions = [p for p in model.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)) if versions else None


def config_inputs(config_text: str) -> list[tuple[str, str, tuple[int, ...]]]:
    out = []
    for name, dtype, dims in INPUT.findall(config_text):
        if dtype not in DTYPES:
            raise ValueError(f"input {name}: unexpected {dtype}")
        out.append((name, DTYPES[dtype], tuple(int(d) for d in dims.replace(",", " ").split())))
    return out


def check_exported(model: Path, torch_release: str, rows: int = 2) -> str:
    """Raise ``ValueError`` if the exported model in ``model`` would not serve; else a one-line summary."""
    import numpy as np
    import torch

    version = newest_version(model)
    if version is None or not (version / TORCHSCRIPT).is_file():
        raise ValueError(f"{model.name}: no <version>/{TORCHSCRIPT}")
    for path in (model / "config.pbtxt", version / "model.py", version / PROVENANCE):
        if not path.is_file():
            raise ValueError(f"{model.name}: {path.relative_to(model)} missing")
    config = (model / "config.pbtxt").read_text()
    if not re.search(r'^backend:\s*"python"', config, re.M):
        raise ValueError(f"{model.name}: config.pbtxt is not a python-backend model")
    info = json.loads((version / PROVENANCE).read_text())
    written_by = release(str(info.get("torch", "")))
    if written_by != torch_release:
        raise ValueError(
            f"{model.name}: exported by torch {info.get('torch')!r}, the image has {torch_release}; "
            "export again with the pinned torch or change the pin in both places"
        )
    inputs = config_inputs(config)
    if not inputs:
        raise ValueError(f"{model.name}: no inputs found in config.pbtxt")
    wire = WIRE.search(config)
    to_float = {part.partition(":")[0] for part in (wire.group(1) if wire else "").split(",") if part}
    batch = {}
    for name, dtype, dims in inputs:
        x = np.ones((rows, *dims), dtype=dtype) if dtype == "bool" else np.zeros((rows, *dims), dtype=dtype)
        batch[name.lower()] = torch.from_numpy(x.astype(np.float32) if name in to_float else x)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(version / TORCHSCRIPT), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001 - whatever torch raises, the image must not ship
        raise ValueError(f"{model.name}: {TORCHSCRIPT} does not load: {type(exc).__name__}: {exc}") from exc
    try:
        with torch.inference_mode():
            probability, exit_index = module(batch, True)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(
            f"{model.name}: {TORCHSCRIPT} does not answer its inputs: {type(exc).__name__}: {exc}"
        ) from exc
    p = probability.detach().double().numpy().reshape(rows, -1)  # one column per risk
    e = exit_index.detach().numpy().reshape(-1)
    if len(p) != rows or e.shape != (rows,):
        raise ValueError(
            f"{model.name}: answered shapes {list(probability.shape)}, {list(exit_index.shape)} for {rows} rows"
        )
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise ValueError(f"{model.name}: probabilities {p.tolist()} not in [0, 1]")
    probabilities = np.round(p, 4).tolist()
    return f"{model.name}: version {version.name}, torch {info.get('torch')}, p {probabilities}, exits {e.tolist()}"


def check(repositories: list[Path], torch_release: str) -> list[str]:
    """Every check above; raises ``ValueError`` on the first failure, else the report lines."""
    import torch

    lines = []
    installed = release(torch.__version__)
    if installed != torch_release:
        raise ValueError(f"torch {torch.__version__} installed, {torch_release} pinned")
    lines.append(f"torch {torch.__version__} (pinned {torch_release}), Python {sys.version.split()[0]}")
    seen: dict[str, Path] = {}
    for repository in repositories:
        if not repository.is_dir():
            raise ValueError(f"{repository}: not a directory")
        found = models(repository)
        if not found:
            lines.append(f"{repository}: empty (no models served from it)")
        for model in found:
            if model.name in seen:
                raise ValueError(
                    f"model {model.name} is in both {seen[model.name]} and {repository}: "
                    "tritonserver refuses duplicate names across repositories"
                )
            seen[model.name] = repository
            version = newest_version(model)
            if version is not None and (version / TORCHSCRIPT).is_file():
                lines.append(f"{repository}/{check_exported(model, torch_release)}")
            else:
                lines.append(f"{repository}/{model.name}: present (not an export-triton model; not loaded here)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch", required=True, help="the pinned torch release, e.g. 2.13.0")
    parser.add_argument("repositories", nargs="+", type=Path)
    args = parser.parse_args(argv)
    try:
        lines = check(args.repositories, args.torch)
    except ValueError as exc:
        print(f"check_triton_repository: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
