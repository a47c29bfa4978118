"""Metrics that score the images a student's embeddings produce (text rendering: `train.metrics.ocr`)."""
