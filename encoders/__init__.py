"""Per-modality PyTorch encoders (vital-sign/waveform series, labs, chest X-ray, report text).

Not built yet: the fusion models of issue 5 will live on them. Nothing imports this package today.
"""
