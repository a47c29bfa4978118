"""Drop prompts that describe nothing to see ("how do I improve my resume?", "freedom is important")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from filters.base import Context, Filter, register
from filters.lib.tagging import DEFAULT_MODEL, analyse_texts, check_pipe_args

if TYPE_CHECKING:
    from core.records import Prompt


@register
class Visual(Filter):
    """Keeps prompts whose visualness (scores["visual"], see filters/lib/visualness.visual_score) is at
    least `min_score`; drops the rest with "visual: not_visual 0.12 < 0.30". Records that no `tag` step
    scored are scored here first, with the same spaCy pipeline."""

    kind = "visual"

    def __init__(self, min_score: float = 0.3, model: str = DEFAULT_MODEL, batch_size: int = 1000,
                 n_process: int = 1) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        check_pipe_args(batch_size, n_process)
        self.min_score, self.model, self.batch_size, self.n_process = float(min_score), model, batch_size, n_process

    def score(self, records: list[Prompt], ctx: Context) -> None:
        missing = [r for r in records if "visual" not in r.scores]
        if missing:
            found = analyse_texts([r.text for r in missing], self.model, self.batch_size, self.n_process,
                                  ctx.progress)
            for record, (analysis, _) in zip(missing, found):
                record.scores.update(analysis.scores)

    def reason(self, record: Prompt) -> str | None:
        score = record.scores["visual"]
        if score < self.min_score:
            return f"not_visual {score:.2f} < {self.min_score:.2f}"
        return None
