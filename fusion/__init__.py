"""Scoring models: rule scores (NEWS2, qSOFA), fusion models, and their Triton export."""
