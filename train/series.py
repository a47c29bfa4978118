"""`train series`: distil a list of students against one teacher with one recipe, then compare them.

Every student gets the same teacher, data, seed, steps and batch: the recipe and the series' shared
`--set`s, then the student's own `--set`s (a preset name stands for `student.preset=NAME`). The students
train one after another, each into its own run folder, and each a normal `train run` (under torchrun or
accelerate launch, each student's run is data-parallel over all processes: the same global batch and
steps as on one device, so the students compare at equal budget; one student per device would need
as many devices as students and finish when the largest does anyway).

    OUT/series.json          what the series is (recipe, shared sets, students), written first
    OUT/<label>/             each student's run folder (train/runs.py); footprint.json its measured costs
    OUT/scaling.json|md|png  the scaling report (train/series_report.py)

`--resume` continues where the series stopped: finished students are kept, an interrupted one resumes
from its checkpoint, the rest start; then the report is written again (a new --tolerance only redoes that).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.fileio import atomic_write_text
from train.series_report import REPORT_FILES

SERIES_FILE = "series.json"
FOOTPRINT_FILE = "footprint.json"
EVAL_FILE = "eval.json"
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class SeriesStudent:
    label: str               # its run folder's name and its row in the report
    sets: tuple[str, ...]    # recipe overrides, KEY=VALUE

    @classmethod
    def parse(cls, spec: str) -> "SeriesStudent":
        """"flan-t5-small" (a preset) or "LABEL: KEY=VALUE KEY=VALUE ..." (any recipe overrides)."""
        from train.presets import PRESETS, STUDENT_PRESETS

        label, sep, sets = spec.partition(":")
        label = label.strip()
        if not sep:
            if label not in STUDENT_PRESETS:
                hint = "; T5-XXL is the teacher's own encoder" if label in PRESETS else ""
                raise ConfigError(f"--student {spec!r}: not a preset ({', '.join(STUDENT_PRESETS)}){hint}; "
                                  "or give LABEL: KEY=VALUE ... (e.g. 'narrow: student.config.d_model=16')")
            return cls(label, (f"student.preset={label}",))
        beside = (SERIES_FILE, EVAL_FILE, *REPORT_FILES)
        if not LABEL_RE.match(label) or label in beside:
            raise ConfigError(f"--student {spec!r}: the label {label!r} names a folder beside "
                              f"{', '.join(beside)}; use another of letters, digits, '.', '_', '-'")
        try:
            items = tuple(shlex.split(sets))
        except ValueError as exc:
            raise ConfigError(f"--student {spec!r}: {exc}") from None
        return cls(label, items)

    def spec(self) -> str:
        return f"{self.label}: {shlex.join(self.sets)}"


@dataclass(frozen=True)
class Series:
    recipe: str
    students: tuple[SeriesStudent, ...]
    sets: tuple[str, ...] = ()
    data: str | None = None
    teacher: str | None = None
    max_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "students": [s.spec() for s in self.students], "sets": list(self.sets),
                "data": self.data, "teacher": self.teacher, "max_steps": self.max_steps}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Series":
        return cls(data["recipe"], tuple(SeriesStudent.parse(s) for s in data["students"]), tuple(data["sets"]),
                   data["data"], data["teacher"], data["max_steps"])

    def resolve(self) -> list[tuple[SeriesStudent, dict[str, Any]]]:
        """Each student's resolved recipe; every error (a typo in any student's sets) before anything trains."""
        from train.config import check_sources, resolve

        labels = [s.label for s in self.students]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ConfigError(f"--student label {twice[0]!r} is given twice (each student needs its own folder)")
        if not self.students:
            raise ConfigError("a series needs at least one --student")
        out = []
        for student in self.students:
            try:
                _, cfg = resolve(self.recipe, [*self.sets, *student.sets], data=self.data, teacher=self.teacher)
            except ConfigError as exc:
                raise ConfigError(f"student {student.label}: {exc}") from None
            check_sources(cfg)
            out.append((student, cfg))
        return out


def open_series(output: Path, given: Series | None, resume: bool) -> Series:
    """The series in OUT: a new one (OUT absent or empty) or, with resume, the one OUT holds (a series
    given on the command line as well must be the same); every student's recipe is checked first."""
    marker = output / SERIES_FILE
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file; choose a folder")
    held = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    if not resume:
        if given is None:
            raise ConfigError("give --recipe and --student (or --resume to continue a series in --output)")
        if os.environ.get("RANK", "0") != "0":  # launched: rank 0 checks and writes OUT, the others follow it
            given.resolve()
            return given
        if held:
            raise ConfigError(f"--output {output} is not empty" + (" (it holds a series: pass --resume to continue it)"
                                                                    if marker.exists() else "; choose a new or empty folder"))
        given.resolve()  # a typo in any student's sets is reported before anything is written
        output.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps(given.to_json(), indent=2) + "\n")
        return given
    if not marker.exists():
        raise ConfigError(f"--resume: {output} holds no series ({SERIES_FILE}); check --output, or drop --resume")
    try:
        stored = Series.from_json(json.loads(marker.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{marker}: not a series file written by `train series` ({exc})") from None
    if given is not None and given != stored:
        raise ConfigError(f"--resume: the series given differs from the one in {marker}; continue it as it was "
                          f"(`train series --output {output} --resume` needs no other options) or choose a new --output")
    stored.resolve()
    return stored


def run_states(output: Path, students: tuple[SeriesStudent, ...]) -> list[str]:
    """Each student's run as the series starts: "done" (it has a summary), "resume" (a run folder) or "new".
    Launched on several processes, every rank reads them here before any rank writes (a barrier), so all
    agree on which runs resume."""
    from train.runs import is_run_folder

    states = ["done" if (output / s.label / "summary.json").exists() else
              "resume" if is_run_folder(output / s.label) else "new" for s in students]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()
    return states


def train_student(cfg: dict[str, Any], run: Path, state: str, max_steps: int | None, progress: bool,
                  recipe: str) -> dict[str, Any]:
    """One student's run (run_states says which): its summary when it finished before, else trained."""
    from train.distill import train

    if state == "done":
        return json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return train(cfg, run, resume=state == "resume", max_steps=max_steps, progress=progress, recipe_name=recipe)


def measure_student(run: Path, lengths: list[int], compile_too: bool) -> dict[str, Any]:
    """The final student's costs: parameters, bytes on disk, encode latency and peak memory at each length,
    on the CPU (and the GPU when there is one), eager (and compiled). Kept in footprint.json."""
    import torch

    from train.footprint import encode_footprint, folder_bytes, parameter_count
    from train.runs import student_path
    from train.student import DistillT5EncoderModel

    cache, folder = run / FOOTPRINT_FILE, student_path(run)
    weights = (folder / "model.safetensors").stat()  # a student trained again is measured again
    key = {"lengths": lengths, "compile": compile_too, "cuda": torch.cuda.is_available(), "torch": torch.__version__,
           "weights": [weights.st_size, weights.st_mtime_ns]}
    if cache.exists():
        found = json.loads(cache.read_text(encoding="utf-8"))
        if found.get("key") == key:
            return found
    student = DistillT5EncoderModel.from_pretrained(folder)
    config = student.config
    result: dict[str, Any] = {
        "key": key, "parameters": parameter_count(student),
        "encoder_parameters": parameter_count(student.encoder), "disk_bytes": folder_bytes(folder),
        "bf16_bytes": parameter_count(student) * 2,
        "shape": {k: getattr(config, k) for k in ("num_layers", "d_model", "d_ff", "num_heads", "project_out_dim")},
        "encode": {}}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        model = student.to(device, torch.bfloat16 if device == "cuda" else torch.float32)
        for compiled in (False, True) if compile_too else (False,):
            mode = f"{device}-{'compiled' if compiled else 'eager'}"
            try:
                result["encode"][mode] = encode_footprint(model, lengths, config.vocab_size, compiled=compiled)
            except Exception as exc:  # a compiler missing or failing: the eager numbers still stand
                if not compiled:
                    raise
                result["encode"][mode] = {"error": " ".join(str(exc).split())[:200]}
            torch._dynamo.reset()
    atomic_write_text(cache, json.dumps(result, indent=2) + "\n")
    return result


def run_series(series: Series, output: Path, tolerance: float, lengths: list[int] | None = None,
               compile_too: bool = True, eval_data: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train every student of the series (those not finished), measure them, write the scaling report."""
    from train.series_report import build_report, write_report

    plans = series.resolve()
    summaries = []
    main = os.environ.get("RANK", "0") == "0"
    for (student, cfg), state in zip(plans, run_states(output, series.students)):
        if progress and main:
            print(f"series: {student.label} ({student.spec()}): {state}", flush=True)
        summaries.append(train_student(cfg, output / student.label, state, series.max_steps, progress, series.recipe))
    if not main:  # under torchrun / accelerate launch: rank 0 measures and reports
        return {}
    rows = []
    for (student, cfg), summary in zip(plans, summaries):
        run = output / student.label
        length = cfg["validation"]["max_sequence_length"] or cfg["stages"][-1]["max_sequence_length"]
        rows.append({"label": student.label, "sets": list(student.sets), "preset": cfg["student"].get("preset"),
                     "run": str(run), "summary": summary, "footprint": measure_student(run, lengths or [length], compile_too)})
    suite = _evaluate(output, [r["run"] for r in rows], plans[0][1], eval_data, progress) if eval_data else None
    report = build_report(rows, tolerance, suite)
    report["series"] = series.to_json()
    write_report(report, output)
    return report


def _evaluate(output: Path, runs: list[str], cfg: dict[str, Any], data: str, progress: bool) -> dict[str, Any]:
    """`train eval` of every student on `data`: its gap, and its image metrics where their models load."""
    from train.eval_suite import SuiteOptions, evaluate_suite

    options = SuiteOptions(max_prompts=cfg["validation"]["num_prompts"], progress=progress)
    report = evaluate_suite(runs, cfg["teacher"]["path"], data, options).report
    atomic_write_text(output / EVAL_FILE, json.dumps(report, indent=2) + "\n")
    return report
