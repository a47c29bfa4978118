"""`train` command line: run / eval / export. Kept light at import (torch loads inside commands)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import warnings
from pathlib import Path

import click

from core.cli import OneLineErrors, recipes_command
from train.export import EXPORT_FORMATS, format_list
from train.metrics.ocr import OCR_ENGINES


def _quiet_libraries() -> None:
    """Library loading bars and info logs are noise around our own progress bar (kept with --debug)."""
    import logging

    if (click.get_current_context().find_root().obj or {}).get("debug"):
        return
    # transformers imports torchao when installed, and torch warns about torchao's enums on that import
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # diffusers passes huggingface_hub an argument it deprecated: a warning the user can do nothing about
    warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    for name in ("transformers", "diffusers", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (anywhere on the command line).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Distil a small T5 student that replaces T5-XXL in FLUX.1 / SD3.

    \b
    Examples:
      train run --recipe tiny                                 # CPU smoke run, ~30 s
      train run --recipe flux-t5-base --output runs/flux-base
      train run --recipe flux-t5-base --output runs/flux-base --resume
      train eval --student runs/flux-base/student --teacher black-forest-labs/FLUX.1-dev --data heldout.txt
      train export --checkpoint runs/flux-base --output export/flux-base --format diffusers
    """
    ctx.obj = {"debug": debug}


@main.command()
@click.option("--recipe", required=True, help="Shipped recipe name (see `train recipes`) or a .yaml path.")
@click.option("--data", default=None, help="Curated-set folder or .txt/.jsonl/.parquet file for ALL stages.")
@click.option("--teacher", default=None, help="Teacher pipeline folder, hub id, or tiny:<family> (tiny:flux, tiny:pixart-sigma, ...).")
@click.option("--output", default=None, type=click.Path(file_okay=False), help="Run folder [runs/<recipe>].")
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Stop after N steps, i.e. batches of K updates (extends the last stage if longer).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. optim.lr=3e-4.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last complete checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--print-config", is_flag=True, help="Print the resolved recipe (every key, as YAML) and exit.")
@click.pass_context
def run(ctx: click.Context, recipe: str, data: str | None, teacher: str | None, output: str | None,
        max_steps: int | None, sets: tuple[str, ...], resume: bool, quiet: bool, print_config: bool) -> None:
    """Train a student with a recipe.

    --output must be absent, empty, or a run folder (one holding the recipe.json a run writes first);
    a run folder is continued only with --resume. Ctrl-C stops after the current step, writes a
    checkpoint and prints the command that continues the run (exit status 130). On a CPU the thread
    count comes from the cores free now, said in one line; --set cpu_threads=N or OMP_NUM_THREADS
    overrides it. --print-config checks the recipe, not its paths.

    \b
    Examples:
      train run --recipe tiny
      train run --recipe tiny --teacher ./my-tiny-flux --data prompts.txt --max-steps 400 --output runs/mine
      train run --recipe sd3-t5-base --set optim.batch_size=16 --set cache.dir=/scratch/emb
      train run --recipe flux-t5-base --set optim.lr=3e-4 --print-config > my-recipe.yaml
    """
    # Everything checkable without torch is checked first: a typo is reported in about a second, not
    # after the seconds diffusers and transformers take to import.
    from train.config import check_sources, resolve
    from train.runs import check_output

    name, cfg = resolve(recipe, overrides=list(sets), data=data, teacher=teacher)
    if print_config:
        click.echo(config_yaml(cfg), nl=False)
        return
    out = Path(output or f"runs/{name}")
    check_sources(cfg)
    check_output(out, resume)
    threads = _cpu_threads_before_torch(cfg)
    _quiet_libraries()
    from train.distill import Interrupted, train

    try:
        summary = train(cfg, out, resume=resume, max_steps=max_steps, progress=not quiet, recipe_name=name,
                        cpu_threads=threads)
    except Interrupted as stop:
        again = resume_command(ctx.find_root().info_name, recipe, data, teacher, out, max_steps, sets, quiet)
        _exit_interrupted(f"interrupted at step {stop.step}; checkpoint written to {stop.checkpoint}", again)
    except KeyboardInterrupt:  # while loading or in the final validation: nothing new to save
        _exit_interrupted("interrupted; the run's last checkpoint (if any) is where --resume continues", None)
    if os.environ.get("RANK", "0") != "0":  # under torchrun / accelerate launch, rank 0 reports
        return
    init = summary["gap_initial"]
    click.echo(f"student: {summary['student']}  steps: {summary['steps']}  held-out gap: "
               + (f"{init:.4f} -> " if init is not None else "") + f"{summary['gap_final']:.4f}")


def _cpu_threads_before_torch(cfg: dict) -> tuple[int, str] | None:
    """On a CPU run, the thread count (and why), put in the environment before torch loads: the OpenMP,
    MKL and OpenBLAS pools are sized when they start. None when a GPU may do the work, or when the
    command runs inside a process that already runs torch (a test, a notebook) and nothing explicit
    (cpu_threads, OMP_NUM_THREADS) was asked for: that process's thread count is its own business."""
    from train.config import choose_cpu_threads, cpu_thread_env, gpu_visible, local_processes

    if gpu_visible():
        return None
    if "torch" in sys.modules:
        explicit = cfg["cpu_threads"] or os.environ.get("OMP_NUM_THREADS", "").strip().isdigit()
        return choose_cpu_threads(cfg["cpu_threads"], local_processes()) if explicit else None
    threads = choose_cpu_threads(cfg["cpu_threads"], local_processes())
    cpu_thread_env(threads[0])
    return threads


def _exit_interrupted(message: str, again: str | None) -> None:
    """Exit 130 (as a shell reports Ctrl-C) after one line on stderr, and the command that continues."""
    if os.environ.get("RANK", "0") == "0":
        if again:
            launched = " (launched as this run was)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
            message += f". To continue{launched}:\n  {again}"
        click.echo(message, err=True)
    sys.exit(130)


def config_yaml(cfg: dict) -> str:
    """The resolved recipe as YAML in the schema's order: itself a recipe (`train run --recipe FILE`)."""
    import yaml

    from train.config import SCHEMA

    ordered = {key: cfg[key] for key in SCHEMA if key in cfg}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100)


def resume_command(prog: str | None, recipe: str, data: str | None, teacher: str | None, output: Path,
                   max_steps: int | None, sets: tuple[str, ...], quiet: bool) -> str:
    """The command line that continues an interrupted run: its own options, --output made explicit, --resume."""
    args = ["run", "--recipe", recipe, "--output", str(output)]
    for flag, value in (("--data", data), ("--teacher", teacher), ("--max-steps", max_steps)):
        if value is not None:
            args += [flag, str(value)]
    for item in sets:
        args += ["--set", item]
    args += ["--resume"] + (["--quiet"] if quiet else [])
    return f"{prog or 'train'} {shlex.join(args)}"


@main.command("eval")
@click.option("--student", "students", required=True, multiple=True,
              help="Student folder, run folder, checkpoint, or diffusers export; repeat to compare several.")
@click.option("--teacher", required=True, help="Teacher pipeline folder, hub id, or tiny:<family> (tiny:flux, tiny:pixart-sigma, ...).")
@click.option("--data", required=True, help="Held-out prompts: curated-set folder or .txt/.jsonl/.parquet file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.option("--max-prompts", default=256, show_default=True, type=click.IntRange(min=1),
              help="Use at most this many prompts (the gap's).")
@click.option("--max-sequence-length", default=None, type=int, help="Token length [the first student's training length].")
@click.option("--resolution", default=None, type=int, help="Image size [the first student's training resolution].")
@click.option("--guidance", default=3.5, show_default=True, help="FLUX guidance input (SD3: guidance scale of the images).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device [cuda when there is one, else cpu].")
@click.option("--clip", default=None, help="open_clip model (name or local-dir:FOLDER): CLIP scores and image similarity.")
@click.option("--clip-pretrained", default=None, help="open_clip weights tag or file [openai for named models].")
@click.option("--ocr", default="rapidocr", show_default=True, type=click.Choice(list(OCR_ENGINES)),
              help="OCR engine for the text-rendering scores.")
@click.option("--inception-weights", default=None, type=click.Path(dir_okay=False),
              help="Inception-v3 weights file for FID/KID (torch-fidelity's weights-inception-2015-12-05-6726825d.pth).")
@click.option("--reference-images", default=None, type=click.Path(file_okay=False),
              help="Folder of real images: FID/KID of every model against them too.")
@click.option("--images", default=8, show_default=True, type=click.IntRange(min=1), help="Held-out prompts to draw.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(min=1), help="Sampling steps per image.")
@click.option("--seed", default=0, show_default=True, help="Noise seed, the same for every model's images.")
@click.option("--save-grid", default=None, type=click.Path(dir_okay=False), help="Write the teacher|students images as a PNG.")
@click.option("--html", "html_path", default=None, help="Write a self-contained HTML report (table and image grids).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(students: tuple[str, ...], teacher: str, data: str, as_json: bool, max_prompts: int,
             max_sequence_length: int | None, resolution: int | None, guidance: float, batch_size: int,
             device: str | None, clip: str | None, clip_pretrained: str | None, ocr: str, inception_weights: str | None,
             reference_images: str | None, images: int, steps: int, seed: int, save_grid: str | None,
             html_path: str | None, quiet: bool) -> None:
    """Score students against their teacher, with the teacher's own T5 as the reference row, overall and
    per category: the conditioning gap; on images drawn from the same noise for every model, the CLIP
    score and image similarity (--clip), text rendering by OCR (prompts asking for text), FID and KID
    against the teacher's images (and --reference-images). A metric whose weights are missing is skipped
    with a note. Images are cached (T5SHRINK_CACHE/eval-images): a rerun draws nothing twice.

    \b
    Examples:
      train eval --student runs/tiny/student --teacher tiny:flux --data builtin:tiny
      train eval --student export/a --student export/b --teacher black-forest-labs/FLUX.1-dev \\
                 --data curated/heldout --clip ViT-L-14 --clip-pretrained openai --images 64 \\
                 --inception-weights weights-inception-2015-12-05-6726825d.pth --html eval.html --json
    """
    from core.paths import local_path_or_hub_id
    from curate.report_html import check_html_path
    from train.config import check_teacher_path

    # the paths first, before the imports that take seconds
    for student in students:
        local_path_or_hub_id(student, "student")
    check_teacher_path(teacher)
    if data != "builtin:tiny":
        local_path_or_hub_id(data, "data")
    for value, what in ((inception_weights, "--inception-weights"), (reference_images, "--reference-images")):
        if value and not Path(value).exists():
            raise FileNotFoundError(f"{what} {value}: no such file or folder")
    pretrained_file = clip_pretrained and ("/" in clip_pretrained or Path(clip_pretrained).suffix)  # tags have neither
    if pretrained_file and not Path(clip_pretrained).expanduser().is_file():
        raise FileNotFoundError(f"--clip-pretrained {clip_pretrained}: no such file")
    if html_path:
        check_html_path(Path(html_path))
    _quiet_libraries()
    from train.eval_report import format_table, write_eval_html
    from train.eval_suite import SuiteOptions, evaluate_suite

    options = SuiteOptions(max_prompts=max_prompts, images=images, max_len=max_sequence_length, resolution=resolution,
                           guidance=guidance, steps=steps, seed=seed, batch_size=batch_size, device=device, clip=clip,
                           clip_pretrained=clip_pretrained, ocr=ocr, inception_weights=inception_weights,
                           reference_images=reference_images, keep_images=bool(html_path or save_grid), progress=not quiet)
    result = evaluate_suite(list(students), teacher, data, options)
    report = result.report
    if save_grid and result.image_prompts:
        from train.evaluate import save_grid as write_grid

        report["grid"] = str(write_grid(list(zip(*result.images.values())), save_grid))
    if html_path:
        report["html"] = str(write_eval_html(report, result.image_prompts, result.images, html_path))
    click.echo(json.dumps(report, indent=2) if as_json else format_table(report))
    if not as_json:
        for key, what in (("grid", "grid (teacher | students)"), ("html", "HTML report")):
            if report.get(key):
                click.echo(f"{what}: {report[key]}")


@click.command("mine")
@click.option("--student", required=True, help="Run folder, checkpoint or student folder whose gap ranks the prompts.")
@click.option("--pool", "pools", required=True, multiple=True, metavar="DIR|CRITERION=URI",
              help="A curated set, or CRITERION=URI for any source curate build reads (repeatable).")
@click.option("--recipe", default="balanced", show_default=True, help="Curation recipe: the steps run on the pool and the quotas.")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Folder for the mined curated set.")
@click.option("--size", type=int, help="Prompts in the mined set (overrides the recipe).")
@click.option("--seed", type=int, help="Seed of the probes' noise and of ties (overrides the recipe).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a curation recipe key (repeatable).")
@click.option("--teacher", default=None, help="Teacher pipeline [the one the student was distilled from].")
@click.option("--sigma", "sigmas", multiple=True, type=float, default=(0.5,), show_default=True,
              help="Noise levels the gap is probed at (repeatable); each costs 3 transformer passes a prompt.")
@click.option("--guidance", default=3.5, show_default=True, help="FLUX guidance input of the probes (SD3: its conditional branch).")
@click.option("--near-dup", default=0.8, show_default=True, type=float,
              help="Word 3-gram Jaccard at which two mined prompts are near-identical (only the harder stays); 1 = exact only.")
@click.option("--plain-output", type=click.Path(path_type=Path), default=None,
              help="Also write the pool's plain balanced selection here, for `curate diff PLAIN OUTPUT`.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="torch device [cuda when there is one, else cpu].")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def mine_command(student: str, pools: tuple[str, ...], recipe: str, output: Path, size: int | None, seed: int | None,
                 overrides: tuple[str, ...], teacher: str | None, sigmas: tuple[float, ...], guidance: float,
                 near_dup: float, plain_output: Path | None, batch_size: int, device: str | None, quiet: bool) -> None:
    """Mine a pool for the prompts a student still gets wrong: score each by the student's conditioning gap
    against its teacher, then keep the hardest under the recipe's quotas and clusters (one of each group of
    near-identical prompts). The result is a curated set: a training stage's data, `curate inspect` shows its
    gap scores, `curate diff` compares it with the pool's plain balanced selection. Scores are cached: mining
    the same pool again with other quotas scores nothing twice.

    \b
    Examples:
      curate mine --student runs/tiny --pool curated/balanced --recipe tiny --size 200 --output curated/mined \\
                  --plain-output curated/plain && curate diff curated/plain curated/mined
      curate mine --student runs/flux-base --pool curated/balanced --size 5000 --sigma 0.25 --sigma 0.75 --output curated/hard
      curate mine --student runs/flux-base --pool text=prompts.jsonl --pool semantic=compbench/ --output curated/hard
    """
    from core.paths import local_path_or_hub_id

    local_path_or_hub_id(student, "--student")
    _quiet_libraries()
    from curate.report import reason_counts_line
    from train.mine import mine

    result = mine(student, list(pools), output, recipe, list(overrides), size, seed, teacher, list(sigmas), guidance,
                  batch_size, near_dup, device, plain_output, progress=not quiet)
    click.echo(f"mined {result.kept:,} prompts into {result.out_dir} ({result.rejected:,} rejected: "
               f"{reason_counts_line(result.reasons)}) in {result.seconds:.1f}s")


EXPORT_HELP = """Export a trained student.

\b
Formats:
{formats}
\b
Examples:
  train export --checkpoint runs/flux-base --output export/flux-base --format diffusers
  train export --checkpoint runs/flux-base/checkpoints/step-00050000 --output t5base.safetensors --format comfyui --dtype bf16
"""


@main.command(help=EXPORT_HELP.format(formats="\n".join(f"  {line}" for line in format_list().splitlines())))
@click.option("--checkpoint", required=True, help="Run folder (newest checkpoint / final student), checkpoint or student folder.")
@click.option("--output", required=True, type=click.Path(), help="Output folder (comfyui: a folder or a .safetensors path).")
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)), default="distillt5", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "fp16"]), default="fp32", show_default=True)
def export(checkpoint: str, output: str, fmt: str, dtype: str) -> None:
    from core.paths import local_path_or_hub_id

    local_path_or_hub_id(checkpoint, "checkpoint")  # before the imports that take seconds
    _quiet_libraries()
    from train.export import export_student

    path = export_student(checkpoint, output, fmt=fmt, dtype=dtype)
    click.echo(f"exported ({fmt}): {path}")


@main.command()
@click.option("--recipe", default=None, help="Training recipe every student shares (name or .yaml path).")
@click.option("--student", "students", multiple=True, metavar="SPEC",
              help="A preset (see `train presets`) or 'LABEL: KEY=VALUE ...'; repeat for each student.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Series folder (a run folder per student).")
@click.option("--data", default=None, help="Curated-set folder or file for all stages of all students.")
@click.option("--teacher", default=None, help="Teacher pipeline folder, hub id, or tiny:<family> (tiny:flux, tiny:pixart-sigma, ...).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a recipe key for every student.")
@click.option("--max-steps", default=None, type=click.IntRange(min=1), help="Stop each student after N steps.")
@click.option("--tolerance", default=0.05, show_default=True, type=click.FloatRange(min=0),
              help="Pick the smallest student whose gap is within this fraction of the best.")
@click.option("--lengths", default=None, help="Token lengths to time encodes at, e.g. 77,512 [the training length].")
@click.option("--no-compile", is_flag=True, help="Time eager encodes only (torch.compile takes a while per student).")
@click.option("--eval-data", default=None, help="Also score every student with `train eval` on these prompts.")
@click.option("--resume", is_flag=True, help="Continue the series in --output (no other options needed).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def series(recipe: str | None, students: tuple[str, ...], output: str, data: str | None, teacher: str | None,
           sets: tuple[str, ...], max_steps: int | None, tolerance: float, lengths: str | None, no_compile: bool,
           eval_data: str | None, resume: bool, quiet: bool) -> None:
    """Distil several students with one recipe, teacher and budget, then compare them: a scaling report
    (OUT/scaling.md, .json, .png) of each student's parameters, size on disk, encode latency and peak
    memory (CPU, and GPU when present; eager and compiled) and held-out gap per category, and the
    smallest student within --tolerance of the best. Students train one after another, each a normal
    `train run` into OUT/<label> (data-parallel under torchrun / accelerate launch); --resume picks up
    where the series stopped, and reruns only the report when every student is done.

    \b
    Examples:
      train series --recipe flux-t5-base --student flan-t5-small --student flan-t5-base \\
                   --student flan-t5-large --output runs/flux-series --tolerance 0.1
      train series --recipe tiny --output runs/tiny-series \\
                   --student "d16: student.config.d_model=16" --student "d32: student.config.d_model=32"
      train series --output runs/flux-series --resume --tolerance 0.2
    """
    from train.series import Series, SeriesStudent, open_series, run_series

    given = None
    if recipe or students:
        if not (recipe and students):
            raise click.UsageError("--recipe and --student go together (or --resume alone)")
        given = Series(recipe, tuple(SeriesStudent.parse(s) for s in students), tuple(sets), data, teacher, max_steps)
    elif sets or data or teacher or max_steps:
        raise click.UsageError("--set, --data, --teacher and --max-steps belong to a new series (with --recipe)")
    try:
        token_lengths = [int(x) for x in lengths.split(",")] if lengths else None
    except ValueError:
        raise click.BadParameter(f"{lengths!r}: a comma-separated list of token counts", param_hint="--lengths") from None
    out = Path(output)
    plan = open_series(out, given, resume)  # every student's recipe checked before torch loads
    _quiet_libraries()
    from train.distill import Interrupted

    try:
        report = run_series(plan, out, tolerance, token_lengths, not no_compile, eval_data, progress=not quiet)
    except Interrupted as stop:
        _exit_interrupted(f"interrupted at step {stop.step}; checkpoint written to {stop.checkpoint}",
                          f"{_prog()} series --output {shlex.quote(str(out))} --resume")
    except KeyboardInterrupt:  # while loading or measuring: the finished runs and checkpoints stay
        _exit_interrupted("interrupted", f"{_prog()} series --output {shlex.quote(str(out))} --resume")
    if not report:  # not rank 0 of a launched series
        return
    click.echo((out / "scaling.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"recommended: {report['recommendation']['pick']}  (report: {out / 'scaling.md'})")


def _prog() -> str:
    return click.get_current_context().find_root().info_name or "train"


@main.command()
def presets() -> None:
    """The shipped student presets (`--set student.preset=NAME`, `train series --student NAME`)."""
    from train.presets import preset_table

    click.echo(preset_table())


main.add_command(recipes_command("train", "train.config:recipe_keys"))


if __name__ == "__main__":
    sys.exit(main())
