"""Distil a small T5 student that replaces T5-XXL in FLUX.1 / SD3 (`train run`, `train eval`, `train export`).

Modules: student (the DistillT5 layout), teachers (FLUX / SD3 pipelines), distill (the training loop),
evaluate (the conditioning gap, preview grids), cache (teacher embeddings on disk), data (prompts),
config (recipe schema), export (formats, eval), tiny (tiny random pipelines for tests and the smoke run).
"""
