"""Serving the models through NVIDIA Triton: the shipped model repository (``models/``, package data)
and the export of trained fusion models into a generated one (``export.py``)."""

from pathlib import Path

MODEL_REPOSITORY = Path(__file__).resolve().parent / "models"
"""The shipped repository: the rule model ``early_warning`` (python backend, imports ``icuwatch.core``)."""
TEMPLATES = Path(__file__).resolve().parent / "templates"
