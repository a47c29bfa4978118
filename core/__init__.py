"""The bottom layer every other package imports and that imports none of them: the prompt record and its
text rules (records), errors and one-line messages (errors), the cache folder and the "not found" rule
(paths), atomic file and folder writes (fileio), the sharded cache under both embedding caches and its
damage policy (tensor_cache), the recipe loader (recipe) and the CLI's shared error handling (cli).
The stack is bench -> train -> curate -> filters -> core (tests/test_layers.py checks it)."""
