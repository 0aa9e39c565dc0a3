"""Which vital-sign series encoder: GRU, temporal convolution or transformer? Measured, not assumed.

For each kind, the attention fusion model is trained with that series encoder on the PhysioNet 2019
cohort (real stays, fixed split; same seed, epochs and rows for all) and we report validation AUROC,
the encoder's parameters, and its CPU time per 256-row batch (one thread). Prints one JSON object.

    python benchmarks/timeseries_encoders.py [--epochs 4] [--rows-per-epoch 100000]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    from icuwatch.encoders.timeseries import KINDS, build
    from icuwatch.fusion import cohorts
    from icuwatch.fusion.training import TrainConfig, train

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows-per-epoch", type=int, default=100_000)
    parser.add_argument("--cohort", default="physionet")
    args = parser.parse_args()

    cohort = cohorts.load(args.cohort)
    dims = cohort.dims()["vitals"]
    results = {}
    for kind in KINDS:
        cfg = TrainConfig(epochs=args.epochs, rows_per_epoch=args.rows_per_epoch, series_kind=kind)
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
    print(
        json.dumps(
            {
                "cohort": args.cohort,
                "data": cohort.meta.get("source"),
                "epochs": args.epochs,
                "rows_per_epoch": args.rows_per_epoch,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
