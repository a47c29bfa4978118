"""Distil a small T5 student that replaces T5-XXL in FLUX.1 / SD3 (`train run`, `train eval`, `train export`).

Modules: student (the DistillT5 layout), teachers (FLUX / SD3 pipelines), distill (the trainer: one
trajectory, the Trainer's phases, `train`), runs (the run folder: checkpoints, the log, finding and
loading a student), evaluate (the conditioning gap, preview grids, `train eval`), cache (teacher
embeddings on disk), data (prompts), config (recipe schema, CPU threads), export (formats), weights
(checked loading of weight files), fp8 (float8 transformer linears), tiny (tiny random pipelines for
tests and the smoke run), cli (the `train` command).
"""
