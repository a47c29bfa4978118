"""`curate mine`: score a prompt pool by a student's conditioning gap and select the hardest prompts into a
curated set, under a curation recipe's quotas and clusters.

The pool goes through the recipe's own steps first (tag, length, dedup, cluster, ...), exactly as in
`curate build`. Then three more whole-pool steps run:
  mine_heldout    drops the validation prompts of the student's run (a stage trained on them would void it);
  mine_gap        each prompt's gap (train.evaluate: the student's conditioning against the teacher's,
                  relative to no T5 text) at a few sigmas, batched; the probes' noise is keyed by the
                  prompt's text, so a score does not depend on the pool around it and is cached on disk
                  (<cache>/mining/<student, teacher and settings>.json): mining the same pool again,
                  under other quotas, scores nothing twice;
  mine_near_dup   dedup_near run over the prompts in order of falling gap, so of a group of near-identical
                  prompts (word 3-gram Jaccard >= near_dup) only the hardest stays;
and balance takes, from each quota group (criterion, category; a cluster's share in a clustered pool),
the prompts of highest gap instead of the lowest hash rank. Top-k alone would fill a quota with variants of
one hard prompt; the quotas, the clusters and the near-duplicate step keep the set spread out.

The curated set is an ordinary one (train run reads it as a stage's data). Its rows carry scores.gap, so do
its rejected rows (over_quota), its manifest's `mining` says what mined it and its `selection` compares
the selected prompts' gap with what the plain balanced selection of the same pool would have had.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from core.errors import ConfigError
from core.fileio import atomic_write_text
from core.records import Prompt, canonical_key
from filters.base import Context, Step, StepResult

PASSES_PER_SIGMA = 3  # teacher-conditioned, T5-zeroed and student-conditioned transformer forwards


def text_seed(seed: int, text: str) -> int:
    """A probe seed from the prompt alone (and the run's seed): a prompt's score is the same in any pool."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{text}".encode("utf-8", "surrogatepass"), digest_size=6).digest(),
                          "big") * 2


class ScoreCache:
    """Per-prompt gap sums (numerator, denominator) in one JSON file; a damaged file is started again."""

    def __init__(self, path: Path | None):
        self.path, self.sums = path, {}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                self.sums = {t: (float(v[0]), float(v[1])) for t, v in loaded.items()}
            except (ValueError, TypeError, IndexError, AttributeError, OSError) as exc:
                print(f"warning: {path}: unreadable mining score cache ({exc}); scoring again", file=sys.stderr)

    def save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(self.sums))
        except OSError as exc:  # a cache that cannot be written costs a rescore next time, never the mining
            print(f"warning: {self.path}: cannot write the mining score cache ({exc})", file=sys.stderr)


class WithoutHeldout(Step):
    """Drops the student's run's validation prompts: a mined stage trained on them would void its validation."""

    kind = "without_heldout"

    def __init__(self, heldout: set[str]):
        self.heldout, self.name = heldout, "mine_heldout"

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        result = StepResult(kept=[r for r in records if r.text not in self.heldout])
        result.dropped = [(r, self.drop("heldout validation prompt of the student's run"))
                          for r in records if r.text in self.heldout]
        return result


class StudentGap(Step):
    """Whole-pool step: scores.gap of every record; records come back hardest first. A non-finite gap (a
    student that blows up on some token) drops the record with reason `nonfinite_gap`."""

    kind = "student_gap"

    def __init__(self, teacher: Any, student: torch.nn.Module, max_len: int, resolution: int, sigmas: list[float],
                 guidance: float, batch_size: int, seed: int, cache: ScoreCache):
        self.teacher, self.student, self.max_len, self.resolution = teacher, student, max_len, resolution
        self.sigmas, self.guidance, self.batch_size, self.seed, self.cache = sigmas, guidance, batch_size, seed, cache
        self.name, self.scored, self.cached = "mine_gap", 0, 0

    def run(self, records: list[Prompt], ctx: Context) -> StepResult:
        from tqdm.auto import tqdm

        result = StepResult(kept=[])
        texts = sorted({r.text for r in records})
        todo = [t for t in texts if t not in self.cache.sums]
        self.cached += len(texts) - len(todo)
        self.student.eval()
        batches = range(0, len(todo), self.batch_size)
        for n, start in enumerate(tqdm(batches, desc="mining: student gap", unit="batch", disable=not ctx.progress)):
            chunk = todo[start : start + self.batch_size]
            for text, sums in zip(chunk, self.score(chunk)):
                self.cache.sums[text] = sums
            self.scored += len(chunk)
            if n % 50 == 49:
                self.cache.save()
        if todo:
            self.cache.save()
        for record in records:
            num, den = self.cache.sums[record.text]
            gap = num / den if den > 0 else math.nan
            if math.isfinite(gap):
                record.scores["gap"] = gap
                result.kept.append(record)
            else:
                result.dropped.append((record, self.drop(f"nonfinite_gap numerator={num} denominator={den}")))
        result.kept.sort(key=lambda r: (-r.scores["gap"], *canonical_key(r)))
        return result

    @torch.no_grad()
    def score(self, texts: list[str]) -> list[tuple[float, float]]:
        from train.evaluate import student_sums, teacher_probes

        teacher = self.teacher
        cond = teacher.encode(texts, self.max_len).to(teacher.device)
        probes = teacher_probes(teacher, cond, self.max_len, self.resolution, [text_seed(self.seed, t) for t in texts],
                                self.sigmas, self.guidance)
        seq = teacher.student_sequence(self.student, teacher.tokenize(texts, self.max_len).to(teacher.device))
        num, den = student_sums(teacher, teacher.student_cond(seq, cond, self.max_len), probes, self.guidance)
        return list(zip(num, den))

    def report(self) -> dict[str, Any]:
        return {"scored": self.scored, "from_cache": self.cached,
                "transformer_passes": self.scored * len(self.sigmas) * PASSES_PER_SIGMA, "text_encoder_passes": self.scored}


def resolve_pools(recipe: str, pools: list[str], overrides: list[str], size: int | None,
                  seed: int | None) -> tuple[str, dict[str, Any]]:
    """The curation recipe with its pools replaced by --pool: CRITERION=URI as `curate build --source` takes
    it (its --set keys apply), or a curated set, read once under the recipe's first criterion (its rows
    keep their own). A criterion that no pool names reads nothing: mining never generates prompts."""
    from core.records import CRITERIA
    from curate.curated_set import is_curated_set
    from curate.pipeline import resolve_recipe

    named = [p for p in pools if p.partition("=")[0] in CRITERIA and p.partition("=")[2]]
    sets = [p for p in pools if p not in named]
    for pool in sets:
        if not Path(pool).exists():
            raise ConfigError(f"--pool {pool}: no such file or folder")
        if not is_curated_set(Path(pool)):
            raise ConfigError(f"--pool {pool}: give a curated set, or CRITERION=URI for any other source "
                              f"(criteria: {', '.join(CRITERIA)})")
    name, data = resolve_recipe(recipe, overrides, sources=named, size=size, seed=seed)
    given = {p.partition("=")[0] for p in named}
    sources = {c: list(entries or []) if c in given else [] for c, entries in data["sources"].items()}
    sources.setdefault(next(iter(data["quotas"])), [])
    sources[next(iter(data["quotas"]))] += [{"uri": pool} for pool in sets]
    data["sources"] = sources
    return name, data


def run_heldout(meta: dict[str, Any]) -> set[str]:
    """The validation prompts of the student's run (empty, with a warning, when its data is not here)."""
    from train.data import heldout_prompts

    try:
        return set(heldout_prompts(meta) or ())
    except (FileNotFoundError, ConfigError) as exc:
        print(f"warning: the run's validation prompts cannot be rebuilt ({exc}); a mined stage may train on them",
              file=sys.stderr)
        return set()


def score_cache_path(student_dir: Path, teacher: Any, settings: dict[str, Any]) -> Path:
    from core.paths import cache_dir, fingerprint
    from train.cache import teacher_cache_id

    key = json.dumps({"student": fingerprint(student_dir), "teacher": teacher_cache_id(teacher.source, teacher.dtype),
                      "frames": teacher.frames, **settings}, sort_keys=True)
    return cache_dir() / "mining" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def mine(student: str, pools: list[str], output: Path, recipe: str = "balanced", overrides: list[str] = (),
         size: int | None = None, seed: int | None = None, teacher: str | None = None, sigmas: list[float] = (0.5,),
         guidance: float = 3.5, batch_size: int = 8, near_dup: float | None = 0.8, device: str | None = None,
         plain_output: Path | None = None, progress: bool = True) -> Any:
    """Mine `pools` with the student of `student` (a run folder, checkpoint or student folder) into the
    curated set `output`; returns curate's BuildResult. The teacher, token length, resolution and frames
    are the student's own (its t5shrink.json) unless `teacher` names another. `plain_output`: also write
    the plain balanced selection of the same pool there (what `curate diff` compares the mined set with)."""
    from curate.pipeline import build
    from filters.dedup_near import DedupNear
    from train.evaluate import load_checked_student
    from train.runs import resolve_student_dir, student_notes
    from train.teachers.registry import load_teacher

    if not pools:
        raise ConfigError("--pool: give at least one pool to mine")
    if not sigmas or any(not 0 < s < 1 for s in sigmas):
        raise ConfigError(f"--sigma values must be in (0, 1), got {list(sigmas)}")
    if near_dup is not None and not 0 < near_dup <= 1:
        raise ConfigError(f"--near-dup must be in (0, 1], got {near_dup}")
    name, data = resolve_pools(recipe, pools, overrides, size, seed)
    folder = resolve_student_dir(student, "--student")  # once: a run folder's checkpoint search warns
    meta = student_notes(folder)
    source = teacher or meta.get("teacher")
    if not source:
        raise ConfigError(f"{student}: the student's notes name no teacher; give --teacher")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_teacher(source, device=device)
    if meta.get("frames") and model.frames is not None:
        model.frames = meta["frames"]
    _, net, meta = load_checked_student(model, folder)
    max_len, resolution = int(meta.get("max_sequence_length") or 77), int(meta.get("resolution") or 512)
    model.check_resolution(resolution)
    settings = {"max_sequence_length": max_len, "resolution": resolution, "sigmas": [float(s) for s in sigmas],
                "guidance": guidance, "seed": int(data.get("seed", 0))}
    scorer = StudentGap(model, net.to(device), max_len, resolution, settings["sigmas"], guidance, batch_size,
                        settings["seed"], ScoreCache(score_cache_path(folder, model, settings)))
    steps: list[Step] = [WithoutHeldout(run_heldout(meta)), scorer]
    if near_dup is not None:
        dedup = DedupNear(threshold=near_dup)
        dedup.name = "mine_near_dup"
        steps.append(dedup)
    if plain_output is not None:  # the same candidates, balanced by hash rank
        build(name, data, Path(plain_output), progress=progress, extra_steps=steps[:1])
    mining = {"student": str(folder.resolve()), "step": meta.get("step"), "teacher": source, "score": "gap", **settings,
              "near_dup": near_dup}
    return build(name, data, Path(output), progress=progress, extra_steps=steps, select_by="gap",
                 manifest_extra={"mining": mining})
