"""`train eval`: the evaluation suite. Several students and the teacher's own T5 (the reference row,
"teacher") on one held-out prompt set, per category and overall:

  gap                the conditioning gap (train.evaluate.GapEvaluator) on the first `max_prompts` prompts
  clip_score         CLIP score of the image against its prompt (open_clip; train.evaluate.clip_report)
  image_similarity   cosine of the CLIP image embeddings of the teacher's and the model's image
  ocr_*              text rendering on prompts with rendered_text: word accuracy, edit score, exact
                     (train.metrics.ocr)
  fid_* / kid_*      FID and KID of the model's images against the teacher's, and against a folder of
                     reference images (torchmetrics, on Inception-v3 features or a given extractor)

The image metrics use the first `images` held-out prompts, drawn once per model from the same noise
(one seed) and kept in an on-disk cache (ImageCache): a rerun, or a new student beside old ones, draws
only what it has not drawn before. A metric whose model or weights are missing is skipped with a note
in the report, never an error, except a --clip model that was named and cannot load: that is a typo
the user wants to hear about before the slow part.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError, did_you_mean, one_line
from train.cache import teacher_cache_id
from train.evaluate import GapEvaluator, clip_report, load_checked_student, sample
from train.metrics.fid import extract_features, feature_extractor, fid_kid, load_reference_images
from train.teachers.base import Teacher

TEACHER = "teacher"  # the reference row's name: the teacher's own T5 encoder
METRICS = ("gap", "clip_score", "image_similarity", "ocr_word_accuracy", "ocr_edit_score", "ocr_exact",
           "fid_teacher", "kid_teacher", "fid_reference", "kid_reference")
# torch-fidelity's name for the Inception weights it downloads into torch's hub cache on first use


@dataclass(frozen=True)
class Sampling:
    """Everything besides the model and the prompt that decides an image (and so its cache key)."""

    max_len: int
    resolution: int
    steps: int
    guidance: float
    seed: int
    frames: int | None = None  # video families: frames of each clip (its middle frame is scored)


@dataclass
class Encoder:
    """One row of the report: a T5 in the teacher's T5 slot. `identity` names its weights for the cache
    (the teacher's "teacher-t5", a student's folder content hash)."""

    name: str
    module: torch.nn.Module
    identity: str
    path: str | None = None
    is_teacher: bool = False


@dataclass
class SuiteResult:
    """The JSON report, plus what the HTML report shows beside it: the drawn prompts and each row's images."""

    report: dict[str, Any]
    image_prompts: list[dict[str, Any]]
    images: dict[str, list[Any]] = field(default_factory=dict)


# ---- prompts --------------------------------------------------------------------------------------


def heldout_prompts(data: str, max_prompts: int) -> list[dict[str, Any]]:
    """The held-out prompts as train.data splits them (categories from the set, or the tagger for plain
    files), each with `rendered_text`: a curated set's own, else what the tag step would extract for a
    text_rendering prompt (filters/tag.py's rule), so plain prompt files are scored by OCR too."""
    from filters.lib.rendered_text import extract_rendered_text
    from train.data import load_prompts, split_heldout

    prompts = split_heldout(load_prompts(data), max_prompts)
    stored = _stored_rendered_text(data)
    out = []
    for p in prompts:
        rendered = stored.get(p["text"]) or (extract_rendered_text(p["text"]) if p["category"] == "text_rendering" else [])
        out.append({**p, "rendered_text": [t for t in rendered if t.strip()]})
    return out


def _stored_rendered_text(data: str) -> dict[str, list[str]]:
    """text -> rendered_text of a curated set's kept rows; {} for any other source."""
    from curate.curated_set import is_curated_set, read_records

    if data == "builtin:tiny" or not is_curated_set(Path(data)):
        return {}
    return {r["text"]: list(r.get("rendered_text") or []) for r in read_records(Path(data))}


# ---- the rows: the teacher's T5 and the students ----------------------------------------------------


def teacher_encoder(teacher: Teacher) -> Encoder:
    return Encoder(TEACHER, getattr(teacher.pipe, teacher.t5_slot), "teacher-t5", is_teacher=True)


def student_encoder(teacher: Teacher, path: str, device: str) -> tuple[Encoder, dict[str, Any]]:
    """A student as a report row (named by the path given), and its notes (t5shrink.json)."""
    from core.paths import fingerprint  # the content rule every cache of the project keys models by

    folder, student, meta = load_checked_student(teacher, path)
    return Encoder(path, student.to(device).float().eval(), f"student-{fingerprint(folder)}", str(folder)), meta


# ---- images, cached -------------------------------------------------------------------------------


class ImageCache:
    """One PNG per (teacher, encoder, prompt, sampling settings) under core.paths.cache_dir()/eval-images.
    PNG is lossless, so a cached image is the image as drawn; files are written atomically, and a missing
    or unreadable one is drawn again."""

    def __init__(self, teacher_id: str, root: Path | None = None):
        from core.paths import cache_dir

        self.teacher_id = teacher_id
        self.root = Path(root) if root is not None else cache_dir() / "eval-images"
        self.writable = True

    def key(self, encoder: Encoder, prompt: str, sampling: Sampling) -> str:
        settings = {k: v for k, v in sampling.__dict__.items() if v is not None}  # image keys as before frames existed
        fields = {"teacher": self.teacher_id, "encoder": encoder.identity, "prompt": prompt, **settings}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, key: str) -> Any:
        from PIL import Image

        try:
            with Image.open(self.path(key)) as image:
                return image.convert("RGB")
        except (OSError, ValueError):
            return None

    def put(self, key: str, image: Any) -> None:
        """Store an image; a folder that cannot be written (read-only, full) only turns storing off, with
        one warning, as every cache of the project does."""
        from core.fileio import atomic_write_bytes

        if not self.writable:
            return
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        try:
            atomic_write_bytes(self.path(key), buffer.getvalue())
        except OSError as exc:
            self.writable = False
            warnings.warn(f"image cache: cannot write to {self.root} ({exc.strerror or one_line(exc, 160)}); "
                          "images are no longer cached (set T5SHRINK_CACHE to a writable folder)")


@torch.no_grad()
def draw(teacher: Teacher, encoder: Encoder, texts: list[str], sampling: Sampling) -> list[Any]:
    """PIL images of `texts` with `encoder` in the T5 slot, every one from the seed's noise. A student's
    SD3 unconditional branch goes through the student too, as in a pipeline with the student plugged in."""
    s = sampling
    cond = teacher.encode(texts, s.max_len)
    uncond = None
    if not encoder.is_teacher:
        seq = teacher.student_sequence(encoder.module, teacher.tokenize(texts, s.max_len).to(teacher.device))
        cond = teacher.student_cond(seq, cond, s.max_len)
        uncond = teacher.student_uncond(encoder.module, s.max_len)
    latents = sample(teacher, cond, s.resolution, s.steps, s.guidance, s.seed, s.max_len, uncond)
    return teacher.decode(latents, s.resolution)


def cached_images(teacher: Teacher, encoder: Encoder, texts: list[str], sampling: Sampling, cache: ImageCache,
                  batch_size: int, progress: bool) -> tuple[list[Any], int]:
    """(one image per text, how many were drawn now rather than read from the cache)."""
    from tqdm import tqdm

    keys = [cache.key(encoder, text, sampling) for text in texts]
    images = [cache.get(key) for key in keys]
    todo = [i for i, image in enumerate(images) if image is None]
    with tqdm(total=len(todo), desc=f"images {encoder.name}", unit="image", disable=not progress or not todo) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for i, image in zip(chunk, draw(teacher, encoder, [texts[i] for i in chunk], sampling)):
                cache.put(keys[i], image)
                images[i] = image
            bar.update(len(chunk))
    return images, len(todo)


# ---- metrics --------------------------------------------------------------------------------------

Scores = dict[str, dict[str, Any]]  # scope ("overall" or a category) -> metric -> value


def _mean_by_category(values: list[float], categories: list[str]) -> dict[str, float]:
    """Mean of `values` overall and per category (keys "overall" and each category present)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for value, cat in zip(values, categories):
        groups[cat].append(value)
        groups["overall"].append(value)
    return {scope: sum(v) / len(v) for scope, v in groups.items()}


def clip_scores(embedder: Any, prompts: list[dict[str, Any]], teacher_images: list[Any], images: list[Any]) -> Scores:
    """clip_score and image_similarity (against the teacher's image of the same prompt and noise)."""
    report = clip_report(embedder, prompts, list(zip(teacher_images, images)))
    out: Scores = defaultdict(dict)
    for scope, row in [("overall", report), *report["per_category"].items()]:
        out[scope].update(clip_score=row["clip_score_student"], image_similarity=row["image_similarity"])
    return out


def ocr_scores(engine: Any, prompts: list[dict[str, Any]], images: list[Any]) -> tuple[Scores, list[dict[str, Any]]]:
    """Word accuracy, edit score and exact match of the text prompts' images, and each image's reading."""
    from train.metrics.ocr import score_images

    chosen = [i for i, p in enumerate(prompts) if p["rendered_text"]]
    rows = score_images(engine, [images[i] for i in chosen], [prompts[i]["rendered_text"] for i in chosen])
    out: Scores = defaultdict(dict)
    categories = [prompts[i]["category"] for i in chosen]
    for metric in ("word_accuracy", "edit_score", "exact"):
        for scope, value in _mean_by_category([r[metric] for r in rows], categories).items():
            out[scope][f"ocr_{metric}"] = value
    readings = [{"index": i, "expected": prompts[i]["rendered_text"], **row} for i, row in zip(chosen, rows)]
    return out, readings


def distance_scores(features: torch.Tensor, teacher: torch.Tensor, reference: torch.Tensor | None,
                    categories: list[str], seed: int) -> Scores:
    """fid/kid against the teacher's images (overall and per category) and against the reference images
    (overall only: reference images have no categories)."""
    out: Scores = defaultdict(dict)
    scopes = [("overall", list(range(len(categories))))]
    scopes += [(c, [i for i, x in enumerate(categories) if x == c]) for c in sorted(set(categories))]
    for scope, rows in scopes:
        out[scope]["fid_teacher"], out[scope]["kid_teacher"] = fid_kid(teacher[rows], features[rows], seed)
    if reference is not None:
        out["overall"]["fid_reference"], out["overall"]["kid_reference"] = fid_kid(reference, features, seed)
    return out


# ---- the suite --------------------------------------------------------------------------------------


@dataclass
class SuiteOptions:
    """`train eval`'s settings. max_len / resolution default to the first student's training values.
    `keep_images`: draw images even when no image metric can run (for the HTML report or the grid)."""

    max_prompts: int = 256
    images: int = 8
    max_len: int | None = None
    resolution: int | None = None
    guidance: float = 3.5
    steps: int = 20
    seed: int = 0
    batch_size: int = 8
    device: str | None = None
    clip: str | None = None
    clip_pretrained: str | None = None
    ocr: str = "rapidocr"
    inception_weights: str | None = None
    reference_images: str | None = None
    keep_images: bool = False
    progress: bool = True


@dataclass
class Tools:
    """The image metrics' models (None: skipped), and what each used or why it was skipped."""

    clip: Any = None
    ocr: Any = None
    extractor: Any = None
    reference: list[Any] | None = None
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def any(self) -> bool:
        return any(x is not None for x in (self.clip, self.ocr, self.extractor))


def load_tools(options: SuiteOptions, device: str, resolution: int, feature_module: torch.nn.Module | None = None) -> Tools:
    """CLIP, OCR and the FID/KID extractor, each loaded or skipped with a note: missing OCR, Inception or
    hub CLIP weights are notes; local CLIP weights the user named that do not load are an error."""
    from train.metrics.ocr import load_ocr

    tools = Tools()
    tools.clip, tools.info["clip"] = load_clip(options, device)
    tools.ocr, note = load_ocr(options.ocr)
    tools.info["ocr"] = {"engine": getattr(tools.ocr, "name", None), "note": note if tools.ocr is None else None}
    tools.extractor, tools.info["fid_kid"] = feature_extractor(options.inception_weights, feature_module)
    if options.reference_images:
        tools.reference = load_reference_images(options.reference_images, resolution)
        tools.info["fid_kid"]["reference_images"] = {"folder": options.reference_images, "count": len(tools.reference)}
    return tools


def load_clip(options: SuiteOptions, device: str) -> tuple[Any, dict[str, Any]]:
    """The open_clip embedder for CLIP scores and image similarity, or None and a note: when no --clip is
    given, or when its weights come from a hub that cannot be reached (offline). A local folder or file
    named as the weights that does not load is an error, as any other path the user got wrong."""
    from filters.lib.embed import build_embedder

    if not options.clip:
        return None, {"model": None, "note": "skipped: no --clip model given (e.g. --clip ViT-L-14 "
                                             "--clip-pretrained openai, or local-dir:FOLDER)"}
    local = options.clip.startswith("local-dir:") or Path(str(options.clip_pretrained or "")).expanduser().is_file()
    if not local and not options.clip.startswith("hf-hub:"):
        import open_clip

        if options.clip not in open_clip.list_models():  # a typo is an error, not a skipped metric
            raise ConfigError(f"--clip {options.clip}: not an open_clip model"
                              f"{did_you_mean(options.clip, open_clip.list_models())} (see open_clip.list_models())")
    try:
        clip = build_embedder("clip", model=options.clip, pretrained=options.clip_pretrained,
                              batch_size=options.batch_size, device=device, progress=False)
    except Exception as exc:  # a download refused offline, a missing repo, a gated one: all "not available"
        if local:
            raise
        weights = f"{options.clip}/{options.clip_pretrained}" if options.clip_pretrained else options.clip
        return None, {"model": None, "note": f"skipped: the CLIP weights {weights} could not be loaded "
                                             f"({one_line(exc, 160)}); they need the network, or give local "
                                             "weights (--clip local-dir:FOLDER or --clip-pretrained FILE)"}
    return clip, {"model": clip.name, "note": None}


def choose_sampling(options: SuiteOptions, metas: list[dict[str, Any]]) -> Sampling:
    """Token length and resolution: as given, else the first student's training values (else 77 / 512),
    with a warning for each student trained at another length (it is scored off its training)."""
    first = metas[0] if metas else {}
    max_len = options.max_len or first.get("max_sequence_length") or 77
    resolution = options.resolution or first.get("resolution") or 512
    for meta in metas:
        if meta.get("max_sequence_length") and meta["max_sequence_length"] != max_len:
            warnings.warn(f"evaluating at {max_len} tokens; a student was trained at {meta['max_sequence_length']}")
    frames = next((m["frames"] for m in metas if m.get("frames")), None)  # a video student's training clips
    return Sampling(max_len, resolution, options.steps, options.guidance, options.seed, frames)


def evaluate_suite(students: list[str], teacher_source: str, data: str, options: SuiteOptions,
                   feature_module: torch.nn.Module | None = None) -> SuiteResult:
    """Load the teacher, the students and the metrics' models, then run_suite on the held-out prompts."""
    from train.teachers.registry import load_teacher

    if options.clip_pretrained and not options.clip:
        raise ConfigError("--clip-pretrained needs --clip (the open_clip model it belongs to)")
    twice = sorted({s for s in students if students.count(s) > 1})
    if twice:
        raise ConfigError(f"--student {twice[0]} is given twice (each row is named by its path)")
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = load_teacher(teacher_source, device=device)
    encoders, metas = [teacher_encoder(teacher)], []
    for path in students:
        encoder, meta = student_encoder(teacher, path, device)
        encoders.append(encoder)
        metas.append(meta)
    sampling = choose_sampling(options, metas)
    if teacher.frames is not None and sampling.frames:
        teacher.frames = sampling.frames
    tools = load_tools(options, device, sampling.resolution, feature_module)  # before the slow part
    prompts = heldout_prompts(data, options.max_prompts)
    # the teacher as its embedding cache knows it (a folder by content, with its dtype), and the device:
    # images drawn in bf16 on a GPU are not the CPU's float32 ones
    cache = ImageCache(f"{teacher_cache_id(teacher.source, teacher.dtype)}:{teacher.device.type}")
    result = run_suite(teacher, encoders, prompts, sampling, tools, options, cache)
    result.report.update(teacher=teacher_source, data=data)
    for row, meta in zip(result.report["models"][1:], metas):
        row["training_overlap"] = training_overlap(prompts, meta)
        if row["training_overlap"].get("overlapping"):
            found = row["training_overlap"]
            kinds = ", ".join(f"{kind} {n}" for kind, n in found["by_kind"].items())
            warnings.warn(f"{found['overlapping']} of the {found['prompts']} held-out prompts ({kinds}) were in the "
                          f"training data of {row['name']}, or close rewordings of prompts there; its scores on them "
                          "flatter it (hold them out with curate's decontaminate step, or evaluate on other prompts)")
    return result


def training_overlap(prompts: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """How many held-out prompts a student was trained on, or on a close rewording of (counted as curation's
    decontaminate step counts them: equal after normalisation, or most word trigrams shared), from the
    training data its notes name; `checked` false, with a note, when they name none."""
    from filters.lib.contamination import EvalIndex
    from train.data import training_prompts

    try:
        seen = training_prompts(meta)
    except (OSError, ValueError) as exc:  # moved or deleted since training; ConfigError is a ValueError
        return {"checked": False, "note": f"its training data cannot be read ({one_line(exc, 160)})"}
    if seen is None:
        return {"checked": False, "note": "its notes (t5shrink.json) do not name its training data"}
    matches = EvalIndex(seen).match([p["text"] for p in prompts])
    kinds = Counter(m.kind.removeprefix("eval_") for m in matches if m)
    return {"checked": True, "prompts": len(prompts), "overlapping": sum(kinds.values()), "by_kind": dict(kinds),
            "examples": [p["text"] for p, m in zip(prompts, matches) if m][:3]}


def run_suite(teacher: Teacher, encoders: list[Encoder], prompts: list[dict[str, Any]], sampling: Sampling,
              tools: Tools, options: SuiteOptions, cache: ImageCache) -> SuiteResult:
    """Score every encoder (encoders[0] must be the teacher's own T5, the reference of the image metrics)."""
    if not encoders or not encoders[0].is_teacher:
        raise ValueError("run_suite: the first row must be the teacher's own T5 encoder")
    gap = GapEvaluator(teacher, prompts, sampling.max_len, sampling.resolution, guidance=sampling.guidance,
                       batch_size=options.batch_size)
    shown = prompts[: options.images] if tools.any() or options.keep_images else []
    result = SuiteResult(report={}, image_prompts=shown)
    drawn: dict[str, int] = {}
    for encoder in encoders:
        result.images[encoder.name], drawn[encoder.name] = cached_images(
            teacher, encoder, [p["text"] for p in shown], sampling, cache, options.batch_size, options.progress)
    features = _feature_sets(tools, result.images, teacher.device, options.batch_size)
    reference = _reference_features(tools, teacher.device, options.batch_size)
    rows = []
    for encoder in encoders:
        row = _score_row(encoder, gap(encoder.module), tools, shown, result.images, features, reference, sampling.seed)
        row["images"] = {"drawn": drawn[encoder.name], "from_cache": len(shown) - drawn[encoder.name]}
        rows.append(row)
    result.report = {
        "settings": {"gap_prompts": len(prompts), "image_prompts": len(shown),
                     "text_prompts": sum(bool(p["rendered_text"]) for p in shown),
                     "max_sequence_length": sampling.max_len, "resolution": sampling.resolution,
                     "steps": sampling.steps, "guidance": sampling.guidance, "seed": sampling.seed},
        "metrics": _metric_info(tools, shown),
        "categories": sorted({p["category"] for p in prompts}),
        "models": rows,
    }
    return result


def _feature_sets(tools: Tools, images: dict[str, list[Any]], device: Any, batch_size: int) -> dict[str, torch.Tensor]:
    if tools.extractor is None or not images[TEACHER]:
        return {}
    return {name: extract_features(tools.extractor, ims, device, batch_size) for name, ims in images.items()}


def _reference_features(tools: Tools, device: Any, batch_size: int) -> torch.Tensor | None:
    if tools.extractor is None or not tools.reference:
        return None
    return extract_features(tools.extractor, tools.reference, device, batch_size)


def _score_row(encoder: Encoder, gap: dict[str, Any], tools: Tools, prompts: list[dict[str, Any]],
               images: dict[str, list[Any]], features: dict[str, torch.Tensor], reference: torch.Tensor | None,
               seed: int) -> dict[str, Any]:
    """One report row: every metric overall and per category (None where it did not run or had no images)."""
    scores: Scores = defaultdict(dict)
    scores["overall"]["gap"] = gap["gap"]
    for cat, value in gap["per_category"].items():
        scores[cat]["gap"] = value
    image_scores, readings = _image_scores(encoder, tools, prompts, images, features, reference, seed)
    for scope, values in image_scores.items():
        scores[scope].update(values)
    shown = Counter(p["category"] for p in prompts)
    with_text = Counter(p["category"] for p in prompts if p["rendered_text"])
    shown["overall"], with_text["overall"] = len(prompts), sum(with_text.values())
    full = {scope: {**{m: values.get(m) for m in METRICS}, "num_images": shown[scope], "num_text_images": with_text[scope]}
            for scope, values in scores.items()}
    return {"name": encoder.name, "path": encoder.path, "overall": full.pop("overall"),
            "per_category": dict(sorted(full.items())), "nonfinite_prompts": gap["nonfinite_prompts"],
            "ocr_readings": readings}


def _image_scores(encoder: Encoder, tools: Tools, prompts: list[dict[str, Any]], images: dict[str, list[Any]],
                  features: dict[str, torch.Tensor], reference: torch.Tensor | None,
                  seed: int) -> tuple[Scores, list[dict[str, Any]]]:
    """The image metrics that can run for one encoder's images, and its OCR readings."""
    scores: Scores = defaultdict(dict)
    readings: list[dict[str, Any]] = []
    parts: list[Scores] = []
    own = images[encoder.name]
    if prompts and tools.clip is not None:
        parts.append(clip_scores(tools.clip, prompts, images[TEACHER], own))
    if tools.ocr is not None and any(p["rendered_text"] for p in prompts):
        ocr, readings = ocr_scores(tools.ocr, prompts, own)
        parts.append(ocr)
    if features:
        categories = [p["category"] for p in prompts]
        parts.append(distance_scores(features[encoder.name], features[TEACHER], reference, categories, seed))
    for part in parts:
        for scope, values in part.items():
            scores[scope].update(values)
    return scores, readings


def _metric_info(tools: Tools, shown: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each metric used, or why it was skipped."""
    info = {"gap": {"used": "the teacher's transformer at sigmas 0.25/0.5/0.75 (train.evaluate)", "note": None},
            **{k: dict(v) for k, v in tools.info.items()}}
    if not shown:
        for key in ("clip", "ocr", "fid_kid"):
            info[key]["note"] = info[key]["note"] or "skipped: no images drawn"
    elif not any(p["rendered_text"] for p in shown) and tools.ocr is not None:
        info["ocr"]["note"] = "skipped: none of the drawn prompts asks for rendered text"
    return info
