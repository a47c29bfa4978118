"""`decontaminate`: drop prompts that copy an evaluation set's, so a model is never trained on what it is
scored on.

The eval sets are files, folders or curated sets, read as sources are (curate/sources/files.py, handed
down as ctx.read_prompts: filters may not import curate). The matching rules and their defaults are
filters/lib/contamination.py's, shared with `train eval`. With no eval sets the step does nothing and
loads nothing, so the shipped recipes carry it switched on with `eval_sets: []`.
"""

from __future__ import annotations

from core.errors import ConfigError, describe_value
from core.paths import local_path_or_hub_id
from core.records import Prompt
from filters.base import Context, Step, StepResult, register
from filters.lib.contamination import Contamination, EvalIndex


@register
class Decontaminate(Step):
    """Drops each prompt that matches an eval prompt, as "eval_exact of '<eval prompt>' (<eval set>)",
    "eval_ngram share=<s> of ..." or "eval_semantic cos=<c> of ...".

    eval_sets: paths of prompt files, folders or curated sets (a missing path is an error at once).
    ngram, ngram_threshold: word n-gram size and the share of both prompts' n-grams that makes a copy
    (null: no n-gram test). semantic_threshold: cosine to the nearest eval prompt that makes a copy, with
    the recipe's embedder (null: no semantic test). At 0.9, MiniLM takes "a red bicycle leaning against a
    brick wall" for its "stone wall" rewording (0.93) and not "a photo of a cat" for "... a dog" (0.64);
    but short spatial prompts one word apart score up to 0.95 ("on the top of" / "on the bottom of"): with
    1,000 T2I-CompBench prompts as the eval set, 5% of the others go. Use 0.95 against a compositional set.
    Row-wise: a prompt's fate depends on it and the eval sets only.
    """

    kind = "decontaminate"
    rowwise = True

    def __init__(self, eval_sets: list[str] | None = None, ngram: int = 3, ngram_threshold: float | None = 0.7,
                 semantic_threshold: float | None = 0.9):
        eval_sets = list(eval_sets or [])
        for path in eval_sets:
            if not isinstance(path, str) or not path:
                raise ValueError(f"eval_sets must be a list of paths, got {describe_value(path)} in it")
            try:
                local_path_or_hub_id(path, "eval set")
            except FileNotFoundError as exc:  # a ValueError: the recipe check reports it as one line
                raise ValueError(str(exc)) from None
        EvalIndex.check_options(ngram, ngram_threshold, semantic_threshold)
        self.eval_sets, self.ngram = eval_sets, ngram
        self.ngram_threshold, self.semantic_threshold = ngram_threshold, semantic_threshold
        self._index: EvalIndex | None = None  # built on the first chunk, kept for the others
        self._set_of: dict[str, str] = {}  # eval prompt -> the first eval set that holds it

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        if not self.eval_sets:
            return StepResult(kept=list(records))
        if self._index is None:
            self._index = self._load(ctx)
        result = StepResult(kept=[])
        for record, match in zip(records, self._index.match([r.text for r in records])):
            if match is None:
                result.kept.append(record)
            else:
                result.dropped.append((record, self.drop(self._reason(match))))
        return result

    def _load(self, ctx: Context) -> EvalIndex:
        if ctx.read_prompts is None:
            raise ConfigError("decontaminate needs a prompt reader (Context.read_prompts); curate build gives one")
        for path in self.eval_sets:
            texts = ctx.read_prompts(path)
            if not texts:
                raise ConfigError(f"eval set {path}: holds no readable prompts")
            for text in texts:
                self._set_of.setdefault(text, path)
        embed = ctx.embed_texts if self.semantic_threshold is not None else None
        return EvalIndex(list(self._set_of), self.ngram, self.ngram_threshold, embed, self.semantic_threshold)

    def _reason(self, match: Contamination) -> str:
        score = {"eval_ngram": f" share={match.score:.2f}", "eval_semantic": f" cos={match.score:.2f}"}.get(match.kind, "")
        return f"{match.kind}{score} of {describe_value(match.eval_text)} ({self._set_of[match.eval_text]})"
