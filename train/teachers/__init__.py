"""Teachers: a frozen diffusers pipeline whose T5 the student replaces.

`registry.load_teacher(path_or_id)` reads the pipeline class from model_index.json and returns the
family's teacher: `flux.FluxTeacher` (student replaces `text_encoder_2`) or `sd3.SD3Teacher` (student
replaces `text_encoder_3`). Every family exposes the small surface the trainer and the metric use
(`base.Teacher`); registry.FAMILIES lists them.
"""
