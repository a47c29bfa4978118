"""Distil a small T5 student that replaces T5-XXL in FLUX.1 / SD3 (`train run`, `train eval`, `train export`).

Modules: student (the DistillT5 layout), teachers (the families and their registry), distill (the trainer:
one trajectory, the Trainer's phases, `train`), runs (the run folder: checkpoints, the log, finding and
loading a student), evaluate (the conditioning gap, preview grids, CLIP scores), eval_suite and
eval_report (`train eval`: every metric, the table and the HTML), metrics (OCR), cache (teacher
embeddings on disk), data (prompts), config (recipe keys, CPU threads), export (formats), weights
(checked loading of weight files), fp8 (float8 transformer linears), tiny (tiny random pipelines for
tests and the smoke run), cli (the `train` command).
"""
