"""Which vital-sign series encoder: GRU, temporal convolution or transformer? Measured, not assumed.

For each kind, the attention fusion model is trained with that series encoder on the PhysioNet 2019
cohort (real stays, fixed split; same seed, epochs and rows for all) and we report validation AUROC,
the encoder's parameters, and its CPU time per 256-row batch (one thread). Prints one JSON object.

    icuwatch bench encoders [--epochs 4] [--rows-per-epoch 100000] [--cohort physionet]
"""

from __future__ import annotations

import time

import torch


def run(epochs: int = 4, rows_per_epoch: int = 100_000, cohort_name: str = "physionet") -> dict:
    """``icuwatch bench encoders``: one attention model per series encoder kind, same seed and rows."""
    from icuwatch.encoders.timeseries import KINDS, build
    from icuwatch.fusion import cohorts
    from icuwatch.fusion.training import TrainConfig, train

    cohort = cohorts.load(cohort_name)
    dims = cohort.dims()["vitals"]
    results = {}
    for kind in KINDS:
        cfg = TrainConfig(epochs=epochs, rows_per_epoch=rows_per_epoch, series_kind=kind)
        _, card = train("attention", cohort, cfg, progress=False)
        torch.set_num_threads(1)
        enc = build(kind, dims[-1], 64).eval()
        x = torch.randn(256, *dims)
        with torch.no_grad():
            enc(x)
            t = time.perf_counter()
            for _ in range(20):
                enc(x)
        results[kind] = {
            "val_auroc": card["val"]["auroc"],
            "val_utility": card["val"]["utility"],
            "encoder_parameters": sum(p.numel() for p in enc.parameters()),
            "encoder_ms_per_256_rows": round((time.perf_counter() - t) / 20 * 1e3, 2),
            "model_parameters": card["parameters"],
            "fit_s": card["fit_s"],
        }
        torch.set_num_threads(2)
    return {
        "cohort": cohort_name,
        "data": cohort.meta.get("source"),
        "epochs": epochs,
        "rows_per_epoch": rows_per_epoch,
        "results": results,
    }
