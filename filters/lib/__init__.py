"""What the steps share and are not steps themselves: the tagger and its rules and word lists, rendered-text
extraction, visualness, the dedup keep-first rule, k-means. filters/base.py imports only the modules beside
it as steps, never these."""
