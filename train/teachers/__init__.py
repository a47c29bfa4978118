"""Teachers: a frozen diffusers pipeline whose T5 the student replaces.

`load_teacher(path_or_id)` reads the pipeline class from model_index.json and returns a `FluxTeacher`
(student replaces `text_encoder_2`) or an `SD3Teacher` (student replaces `text_encoder_3`). Both expose
the same small surface the trainer and the metric use; see `base.Teacher`.
"""

from __future__ import annotations

from .base import Cond, Teacher, load_teacher, teacher_kind

__all__ = ["Cond", "Teacher", "load_teacher", "teacher_kind"]
