"""Metrics that score the images a student's embeddings produce: text rendering by OCR (`ocr`), FID and KID
(`fid`). `train.eval_suite` runs them per category; CLIP scores are `train.evaluate.clip_report`."""
