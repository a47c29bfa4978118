"""The conditioning gap (defined below), teacher-vs-student image pairs (preview grids, CLIP metrics), and
loading a student checked against a teacher. `train eval` runs these per model in train/eval_suite.py.

    gap = sum ||f(x,t,S(p)) - f(x,t,T(p))||^2  /  sum ||f(x,t,T(p)) - f(x,t,0)||^2

f is the frozen transformer, T(p) the teacher's conditioning, S(p) the same with the student's
sequence in the T5 slot, and 0 the T5 slot zeroed (CLIP parts kept: the student never replaces them).
Inputs: for each prompt a fixed clean-latent stand-in x0 and noise e (standard normal, seeded by
prompt index; curated sets carry no images), x_t = (1 - t) x0 + t e at flow-matching sigmas t in
{0.25, 0.5, 0.75}. FLUX gets the fixed validation guidance; SD3 is scored on its conditional branch.
0 = the student conditions the model exactly like the teacher; 1 = as far off as no T5 text at all.
Everything but f(x,t,S) is fixed, so it is computed once and each validation is one forward a batch.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from train.teachers.base import Cond, Teacher


class GapEvaluator:
    def __init__(
        self,
        teacher: Teacher,
        prompts: list[dict[str, str]],
        max_len: int,
        resolution: int,
        sigmas: list[float] = (0.25, 0.5, 0.75),
        guidance: float = 3.5,
        batch_size: int = 8,
        seed: int = 0,
        encode: Any = None,
    ):
        """`encode(texts, max_len) -> Cond` defaults to teacher.encode (the trainer passes its cached one)."""
        if not prompts:
            raise ValueError("no held-out prompts to evaluate on")
        self.teacher, self.max_len, self.guidance = teacher, max_len, guidance
        self.prompts = prompts
        self.sigmas = [float(s) for s in sigmas]
        encode = encode or teacher.encode
        self.batches = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                texts = [p["text"] for p in chunk]
                cond = encode(texts, max_len).to(teacher.device)
                seeds = [seed * 7919 + 2 * (start + i) for i in range(len(chunk))]
                points = teacher_probes(teacher, cond, max_len, resolution, seeds, self.sigmas, guidance)
                self.batches.append((texts, [p["category"] for p in chunk], teacher.tokenize(texts, max_len), cond, points))

    @torch.no_grad()
    def __call__(self, student: torch.nn.Module) -> dict[str, Any]:
        was_training = student.training
        student.eval()
        rows: list[tuple[str, str, float, float]] = []  # per prompt: text, category, numerator, denominator
        device = self.teacher.device
        try:
            for texts, cats, ids, cond, points in self.batches:
                seq = self.teacher.student_sequence(student, ids.to(device))
                scond = self.teacher.student_cond(seq, cond, self.max_len)
                num, den = student_sums(self.teacher, scond, points, self.guidance)
                rows += zip(texts, cats, num, den)
        finally:
            student.train(was_training)
        return {**gap_report(rows), "num_prompts": len(self.prompts), "max_sequence_length": self.max_len}


Probe = tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]  # x_t, t, f(x,t,T(p)), per-prompt ||f_T - f_0||^2


def teacher_probes(teacher: Teacher, cond: Cond, max_len: int, resolution: int, seeds: list[int], sigmas: list[float],
                   guidance: float) -> list[Probe]:
    """The teacher's side of the gap for a batch, one probe per sigma: prompt i's x0 and noise come from
    seeds[i] and seeds[i] + 1 (2 transformer passes a prompt and sigma)."""
    x0 = torch.cat([teacher.noise(1, resolution, torch.Generator().manual_seed(s)) for s in seeds])
    eps = torch.cat([teacher.noise(1, resolution, torch.Generator().manual_seed(s + 1)) for s in seeds])
    zero = teacher.zero_cond(cond, max_len)
    probes = []
    for sigma in sigmas:
        x, t = teacher.noised(x0, eps, sigma)
        f_t = teacher.predict(x, t, cond, guidance).float()
        probes.append((x, t, f_t, _per_prompt(f_t - teacher.predict(x, t, zero, guidance).float())))
    return probes


def student_sums(teacher: Teacher, scond: Cond, probes: list[Probe], guidance: float) -> tuple[list[float], list[float]]:
    """Each prompt's gap numerator and denominator summed over the probes (1 transformer pass a probe)."""
    num, den = [0.0] * len(scond), [0.0] * len(scond)
    for x, t, f_t, base in probes:
        diff = _per_prompt(teacher.predict(x, t, scond, guidance).float() - f_t)
        for i, (n, d) in enumerate(zip(diff.tolist(), base.tolist())):
            num[i] += n
            den[i] += d
    return num, den


def gap_report(rows: list[tuple[str, str, float, float]]) -> dict[str, Any]:
    """gap and per_category from per-prompt (text, category, numerator, denominator) sums. Prompts whose
    sums are NaN/inf (a student that blows up on some token) are left out with a warning and listed in
    `nonfinite_prompts` (index, text cut to 60 characters): one bad prompt must not make the whole
    metric NaN, and the user needs to know which."""
    bad = [{"index": i, "text": " ".join(text.split())[:60]} for i, (text, _, n, d) in enumerate(rows)  # one line
           if not (math.isfinite(n) and math.isfinite(d))]
    if bad:
        shown = ", ".join(f"#{b['index']} {b['text']!r}" for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
        warnings.warn(f"conditioning gap: {len(bad)} of {len(rows)} held-out prompts gave non-finite values "
                      f"({shown}); the gap is computed over the other {len(rows) - len(bad)}")
    skip = {b["index"] for b in bad}
    num: dict[str, float] = defaultdict(float)
    den: dict[str, float] = defaultdict(float)
    for i, (_, cat, n, d) in enumerate(rows):
        if i not in skip:
            num[cat] += n
            den[cat] += d
    total_num, total_den = sum(num.values()), sum(den.values())
    return {
        "gap": total_num / max(total_den, 1e-30) if num else float("nan"),
        "per_category": {c: num[c] / max(den[c], 1e-30) for c in sorted(num)},
        "nonfinite_prompts": bad,
    }


def _per_prompt(diff: torch.Tensor) -> torch.Tensor:
    return diff.pow(2).flatten(1).sum(1).cpu()


@torch.no_grad()
def sample(teacher: Teacher, cond: Cond, resolution: int, steps: int, guidance: float, seed: int, max_len: int,
           uncond: Cond | None = None) -> torch.Tensor:
    """Final latents of the teacher's sampler from `cond` (one image a row), fixed seed."""
    x = torch.cat([teacher.noise(1, resolution, torch.Generator().manual_seed(seed)) for _ in range(len(cond))])
    for t in teacher.timesteps(steps, x):
        pred = teacher.predict(x, t, cond, guidance)
        x = teacher.step(teacher.velocity(x, t, pred, guidance, max_len, uncond=uncond), t, x)
    return x


@torch.no_grad()
def image_pairs(teacher: Teacher, student: torch.nn.Module, texts: list[str], cond: Cond, max_len: int, resolution: int,
                steps: int, guidance: float, seeds: list[int], batch_size: int | None = None) -> list[tuple[Any, Any]]:
    """(teacher image, student image) PIL pairs, seed-major: for each seed, one pair per prompt, both
    sampled from the same noise. For SD3 the student image's unconditional branch uses the student's
    own empty-prompt embedding, as a pipeline with the student plugged in would. `batch_size` only
    bounds memory: every row of a batch gets its seed's noise, so the images do not depend on it."""
    was_training = student.training
    student.eval()
    device = teacher.device
    step = batch_size or len(texts)
    try:
        seq = teacher.student_sequence(student, teacher.tokenize(texts, max_len).to(device))
        scond = teacher.student_cond(seq, cond, max_len)
        s_uncond = teacher.student_uncond(student, max_len)
        rows = []
        for seed in seeds:
            for b in range(0, len(texts), step):
                tc, sc = cond[b : b + step], scond[b : b + step]
                t_img = teacher.decode(sample(teacher, tc, resolution, steps, guidance, seed, max_len), resolution)
                s_img = teacher.decode(sample(teacher, sc, resolution, steps, guidance, seed, max_len, s_uncond), resolution)
                rows += list(zip(t_img, s_img))
    finally:
        student.train(was_training)
    return rows


GRID_MIN_CELL = 128  # px: smaller images (the tiny teachers draw 32 px) are enlarged so the labels fit
GRID_LINE = 14  # px per label line (PIL's default font is 11 px high)


def save_grid(rows: list[tuple[Any, ...]], path: str | Path, labels: list[str] | None = None,
              names: tuple[str, ...] = ("teacher", "student")) -> Path:
    """PNG grid, one row per tuple of images: the teacher's image left, then the student's (or each
    student's: `train eval` with several). With `labels` (the validation previews) a header names the
    columns (`names`) and each row has a caption line above it (its prompt, cut to the grid's width),
    images enlarged to GRID_MIN_CELL px for the text to fit. Without, the images alone at their own size
    (`train eval --save-grid`: pixels as sampled, to crop and score again)."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    columns = len(rows[0])
    scale = max(1, -(-GRID_MIN_CELL // w)) if labels else 1  # whole multiples keep small images sharp (nearest)
    cw, ch = w * scale, h * scale
    band = GRID_LINE + 4 if labels else 0
    grid = Image.new("RGB", (columns * cw, band + (ch + band) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for col, name in enumerate(names if labels else ()):
        draw.text((col * cw + cw // 2, 2), name, fill="black", anchor="ma")
    for r, images in enumerate(rows):
        top = band + r * (ch + band)
        if labels:
            draw.text((3, top + 2), _fit(draw, labels[r], columns * cw - 6), fill="black")
        for col, image in enumerate(images):
            grid.paste(image.resize((cw, ch), Image.NEAREST) if scale > 1 else image, (col * cw, top + band))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _fit(draw: Any, text: str, width: int) -> str:
    """`text` on one line, cut with "..." to fit `width` pixels."""
    text = " ".join(text.split())
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "...") > width:
        text = text[:-1]
    return text + "..."


def pair_labels(texts: list[str], seeds: list[int]) -> list[str]:
    """The caption of each image_pairs row (seed-major), the seed named when there are several."""
    return [text if len(seeds) == 1 else f"{text} (seed {seed})" for seed in seeds for text in texts]


def preview_grid(teacher: Teacher, student: torch.nn.Module, texts: list[str], cond: Cond, max_len: int, resolution: int,
                 steps: int, guidance: float, seeds: list[int], path: str | Path) -> Path:
    """Labelled PNG grid (save_grid): one row per (seed, prompt), left the teacher's image, right the student's."""
    rows = image_pairs(teacher, student, texts, cond, max_len, resolution, steps, guidance, seeds)
    return save_grid(rows, path, pair_labels(texts, seeds))


def clip_report(clip: Any, prompts: list[dict[str, str]], pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """CLIP score (100 x max(cos(image, prompt), 0), averaged) of the teacher's and the student's images,
    and their image similarity (mean cosine of paired CLIP image embeddings), overall and per category.
    `clip` is a filters.lib.embed ClipEmbedder; pairs[i] are the images of prompts[i]."""
    import numpy as np

    text = clip.encode([p["text"] for p in prompts])
    t_img = clip.encode_pil_images([a for a, _ in pairs])
    s_img = clip.encode_pil_images([b for _, b in pairs])
    rows = {
        "clip_score_teacher": 100 * np.maximum((t_img * text).sum(1), 0),
        "clip_score_student": 100 * np.maximum((s_img * text).sum(1), 0),
        "image_similarity": (t_img * s_img).sum(1),
    }

    def summary(mask: Any) -> dict[str, Any]:
        return {k: float(v[mask].mean()) for k, v in rows.items()} | {"num_images": int(mask.sum())}

    cats = np.array([p["category"] for p in prompts])
    return summary(np.ones(len(prompts), bool)) | {"per_category": {c: summary(cats == c) for c in sorted(set(cats))}}


def load_checked_student(teacher: Teacher, student_path: str | Path) -> tuple[Path, torch.nn.Module, dict[str, Any]]:
    """(student folder, student, its notes) from anything resolve_student_dir accepts, checked against
    `teacher`: the width it projects to and the token ids it reads must be the teacher's; a student of
    another family is a warning (both read 4096-wide T5 text, so nothing else would say so)."""
    from core.errors import ConfigError
    from train.runs import load_student_dir, resolve_student_dir
    from train.student import check_vocab

    folder = resolve_student_dir(student_path)  # once: a run folder's checkpoint search warns
    student, tokenizer, meta = load_student_dir(folder)
    if student.config.project_out_dim != teacher.width:
        raise ConfigError(f"the student projects to {student.config.project_out_dim}, the teacher reads {teacher.width}")
    check_vocab(tokenizer, teacher.tokenizer, str(student_path))
    if meta.get("teacher_kind") not in (None, teacher.kind):
        warnings.warn(f"the student was distilled from a {meta['teacher_kind']} teacher; scoring it against "
                      f"{teacher.kind} measures a transfer, not its training")
    return folder, student, meta
