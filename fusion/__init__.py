"""Models: cohorts, fusion strategies, the joint X-ray–report space, training, distillation,
evaluation, baselines (rule scores themselves are in ``core.rules``; Triton export in ``serving``)."""
