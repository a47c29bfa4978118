"""What the steps share and are not steps themselves: the tagger and its rules and word lists, rendered-text
extraction, visualness, the dedup keep-first rule, k-means, the embedders (embed) and the evaluation-set
matcher (contamination). filters/base.py imports only the modules beside
it as steps, never these."""
