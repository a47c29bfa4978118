"""The `tag` step: labels prompts with the spaCy tagger (filters/lib/tagging.py), in a build and in `curate tag`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.records import CATEGORIES
from filters.base import Context, Step, StepResult, register
from filters.lib.rendered_text import extract_rendered_text
from filters.lib.tagging import DEFAULT_MODEL, analyse_texts, check_pipe_args

if TYPE_CHECKING:
    from core.records import Prompt

_CATEGORY_ORDER = {c: i for i, c in enumerate(CATEGORIES)}


@register
class Tag(Step):
    """Labels prompts that came unlabelled (category "general" and no tags, as outside sources give
    them): sets category, tags, rendered_text and scores["visual"], scores["tokens"]. With
    overwrite=True it relabels every record. Drops nothing. A rendered_text a source already gave
    is kept (and makes the prompt text_rendering) unless overwrite is set; a record a source labelled
    text_rendering without one gets the quoted words of its text."""

    kind = "tag"
    rowwise = True

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 1000, n_process: int = 1,
                 overwrite: bool = False) -> None:
        check_pipe_args(batch_size, n_process)
        self.model, self.batch_size, self.n_process, self.overwrite = model, batch_size, n_process, overwrite

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        todo = [r for r in records if self.overwrite or (r.category == "general" and not r.tags)]
        if todo:
            found = analyse_texts([r.text for r in todo], self.model, self.batch_size, self.n_process, ctx.progress)
            for record, (analysis, rendered) in zip(todo, found):
                record.category, record.tags = analysis.category, list(analysis.tags)
                if record.rendered_text and not self.overwrite:
                    record.category = "text_rendering"
                    record.tags = sorted({*record.tags, "text_rendering"} - {"general"}, key=_CATEGORY_ORDER.get)
                else:
                    record.rendered_text = rendered
                record.scores.update(analysis.scores)
        for record in records:  # labelled by its source as text rendering, without the words to render
            if record.category == "text_rendering" and not record.rendered_text:
                record.rendered_text = extract_rendered_text(record.text)
        return StepResult(kept=list(records))

