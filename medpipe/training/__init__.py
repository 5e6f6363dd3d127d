"""Training on nnU-Net-format datasets: one concept per module.

``dataset`` (folders, CSV lists, validation) -> ``fingerprint`` -> ``plan`` (nnU-Net's
rules) -> ``preprocess`` (cached) -> ``sampling`` + ``augment`` -> ``loss`` -> ``trainer``
(checkpoints, validation, bundle) with ``validate`` (original-grid evaluation);
``recipe`` runs a YAML recipe end to end (``python -m medpipe.training.recipe``).
"""
