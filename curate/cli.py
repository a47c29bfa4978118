"""`curate`: build, tag, inspect and compare distillation prompt sets.

The commands only parse arguments and call one plain function each (pipeline.build,
filters.tag.Tag, report.summarize, report_diff.diff), so tests call those functions directly.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from core.cli import OneLineErrors, recipes_command
from core.records import CRITERIA


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors (anywhere on the command line).")
def main(debug: bool) -> None:
    """Curate balanced prompt sets for distilling T5-XXL into small text encoders.

    \b
    Examples:
      curate recipes
      curate build --recipe balanced --size 3000 --output out
      curate build --recipe balanced --source text=my_prompts.jsonl --set steps.dedup_semantic.threshold=0.9
      curate build --recipe balanced --size 100000 --engine ray --output out   # on Ray (pip install "t5shrink[ray]")
      curate tag prompts.txt --output tags.jsonl
      curate inspect out --html report.html
      curate diff out out_v2
      curate mine --student runs/tiny --pool out --recipe tiny --size 200 --output mined   # the student's hardest prompts
    """


main.add_command(recipes_command("curate", "curate.pipeline:recipe_keys"))


@main.command()
@click.option("--recipe", "recipe", required=True, help="Shipped recipe name (see `curate recipes`) or a YAML path.")
@click.option("--output", "output", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="Folder for data/, rejected/ and manifest.json (replaced atomically).")
@click.option("--size", type=int, help="Number of prompts in the set (overrides the recipe).")
@click.option("--seed", type=int, help="Seed for generation and selection (overrides the recipe).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set steps.length.min_words=3 (repeatable).")
@click.option("--source", "sources", multiple=True, metavar="CRITERION=URI",
              help="Replace a criterion's pool with a local file/folder or an HF dataset id (repeatable).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data, the same steps and output (needs t5shrink[ray]).")
@click.option("--ray-address", metavar="ADDR", help="With --engine ray: the cluster to join (default: start a local one).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--print-recipe", is_flag=True, help="Print the fully resolved recipe (YAML) and exit.")
def build(recipe: str, output: Path, size: int | None, seed: int | None, overrides: tuple[str, ...],
          sources: tuple[str, ...], engine: str, ray_address: str | None, quiet: bool, print_recipe: bool) -> None:
    """Build a curated prompt set from a recipe.

    \b
    Examples:
      curate build --recipe balanced --size 3000 --output out
      curate build --recipe tiny --output /tmp/tiny
      curate build --recipe compbench --seed 1 --set steps.dedup_near=null
      curate build --recipe balanced --source quality=laion.parquet --set sources.quality.0.text_column=TEXT
      curate build --recipe compbench --source semantic=prompts/ --set sources.semantic.0.category_from_filename=true
      curate build --recipe balanced --set steps.dedup_near=null --print-recipe
      curate build --recipe balanced --size 100000 --engine ray --output out
      curate build --recipe balanced --engine ray --ray-address ray://head:10001 --output out
    """
    from curate.pipeline import build as run_build
    from curate.pipeline import resolve_recipe

    name, data = resolve_recipe(recipe, overrides, sources, size=size, seed=seed)
    if print_recipe:
        import yaml

        click.echo(f"# {name}, resolved\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)
        return
    from curate.report import reason_counts_line

    if ray_address and engine != "ray":
        raise click.UsageError("--ray-address applies to --engine ray only")
    if engine == "ray":
        from curate.engine_ray import build_ray

        result = build_ray(name, data, output, progress=not quiet, address=ray_address)
    else:
        result = run_build(name, data, output, progress=not quiet)
    click.echo(f"kept {result.kept:,}, rejected {result.rejected:,} ({reason_counts_line(result.reasons) or 'none'}) "
               f"in {result.seconds:.1f}s -> {result.out_dir}")


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("--output", type=click.Path(path_type=Path), help="JSONL file to write (default: stdout).")
@click.option("--rejected", "rejected_path", type=click.Path(path_type=Path),
              help="JSONL file for rows that could not be read, with step and reason "
                   "(default: OUTPUT's name + .rejected.jsonl, when --output is given).")
@click.option("--text-column", help="Column holding the prompt in .jsonl/.csv/.parquet input.")
@click.option("--criterion", type=click.Choice(CRITERIA),
              help="Criterion for every prompt (default: text if it asks for rendered text, semantic if it has "
                   "a compositional category, else quality).")
@click.option("--model", default="en_core_web_sm", show_default=True, help="spaCy pipeline to load.")
@click.option("--processes", default=1, show_default=True, help="Worker processes for spaCy.")
def tag(input_path: Path, output: Path | None, rejected_path: Path | None, text_column: str | None,
        criterion: str | None, model: str, processes: int) -> None:
    """Tag prompts: one Prompt record (JSON) per input prompt, in input order.

    The same labelling as the build's `tag` step: category, tags, rendered_text, scores.visual,
    scores.tokens.

    \b
    Examples:
      curate tag prompts.txt
      curate tag captions.parquet --text-column caption --output tags.jsonl
    """
    from curate.sources.files import SourceSpec, read_source
    from filters.base import Context
    from filters.tag import Tag

    result = read_source(SourceSpec(uri=str(input_path), text_column=text_column), criterion="quality")
    if rejected_path is None and output is not None:
        rejected_path = output.with_name(output.name.removesuffix(".jsonl") + ".rejected.jsonl")
    if result.rejected:
        where = f"written to {rejected_path}" if rejected_path else "pass --rejected FILE to keep them"
        click.echo(f"warning: {len(result.rejected)} rows could not be read (first: {result.rejected[0][1]}); "
                   f"{where}", err=True)
    started = time.perf_counter()
    records = Tag(model=model, n_process=processes, overwrite=True).run(result.records, Context()).kept
    for record in records:
        record.criterion = criterion or _infer_criterion(record.category)
    _write_jsonl(output, (r.to_dict() for r in records))
    if rejected_path:  # even when empty: a file from an earlier run must not stand for this one
        _write_jsonl(rejected_path, ({**r.to_dict(), "step": drop.step, "reason": str(drop)}
                                     for r, drop in result.rejected))
    click.echo(f"tagged {len(records):,} prompts in {time.perf_counter() - started:.1f}s", err=True)


def _write_jsonl(path: Path | None, rows) -> None:
    """One JSON object a line, to `path` or to stdout."""
    sink = open(path, "w", encoding="utf-8") if path else sys.stdout
    try:
        for row in rows:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
    finally:
        if path:
            sink.close()


def _infer_criterion(category: str) -> str:
    if category == "text_rendering":
        return "text"
    return "quality" if category == "general" else "semantic"


@main.command()
@click.argument("set_dir", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--html", "html_path", type=click.Path(path_type=Path),
              help="Write a self-contained HTML report to this file (a folder is refused: give e.g. DIR/report.html).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(set_dir: Path, html_path: Path | None, as_json: bool) -> None:
    """Show what a curated set contains: criteria, categories, sources, rejections, scores.

    \b
    Examples:
      curate inspect out
      curate inspect out --json | jq .criteria
      curate inspect out --html report.html
    """
    from curate import report

    if html_path:  # before any work: a bad path fails at once, not after the tables and the map
        from curate.report_html import check_html_path

        check_html_path(html_path)
    summary = report.summarize(set_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        click.echo(report.render_tables(summary))
    if html_path:
        from curate.report_html import write_html

        click.echo(f"wrote {write_html(set_dir, summary, html_path)}", err=True)


@main.command()
@click.argument("dir_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dir_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff(dir_a: Path, dir_b: Path, as_json: bool) -> None:
    """Compare two curated sets: counts, shares, prompts only in one, recipe changes.

    \b
    Example:
      curate diff out_v1 out_v2
    """
    from curate import report_diff

    changes = report_diff.diff(dir_a, dir_b)
    click.echo(json.dumps(changes, indent=2, ensure_ascii=False) if as_json else report_diff.render_diff(changes))


def _add_contributed_commands() -> None:
    """Commands other t5shrink packages add to `curate` through the `t5shrink.curate_commands` entry points:
    `curate mine` needs a teacher and a student, which live in train/, a layer curate never imports."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="t5shrink.curate_commands"):
        main.add_command(entry.load(), entry.name)


_add_contributed_commands()

if __name__ == "__main__":
    main()
