"""Hostile input and crash safety of `curate build` (issue: reliability)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from curate.pipeline import build, resolve_recipe
from curate.curated_set import read_manifest, read_records


def _hostile_jsonl(path):
    rows = [b"\xef\xbb\xbf" + json.dumps({"text": "a lighthouse on a cliff at dusk, oil painting"}).encode()]
    rows += [json.dumps({"text": f"a quiet harbor at dawn number {i}, watercolor"}).encode() for i in range(30)]
    rows += [
        b'{"text": "unterminated',
        b'not json at all',
        json.dumps({"text": "nul\x00 in the middle of a foggy forest path"}).encode(),
        b'{"text": "caf\xe9 with invalid utf-8 bytes"}',
        json.dumps({"text": ""}).encode(),
        json.dumps({"text": " \t  "}).encode(),
        b"",
        json.dumps({"text": "word " * 20_000}).encode(),
        json.dumps({"text": None}).encode(),
        json.dumps({"text": ["a", "list"]}).encode(),
        json.dumps({"caption": "wrong column in this row"}).encode(),
        b'{"text": 5, "x": "\\ud800 lone surrogate"}',
        json.dumps({"id": "dup", "text": "the same text twice"}).encode(),
        json.dumps({"id": "dup", "text": "The same text twice."}).encode(),
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")


def _hostile_csv(path):
    path.write_bytes(
        b'\xef\xbb\xbfprompt,extra\n'
        b'"a sign that says ""OPEN, 24 hours""",1\n'
        b'"a poster titled \'dream big\'",2\n'
        b'"multi\nline \'cell\' sign",3\n'
        b'"bad \xff bytes on a \'sign\'",4\n'
        b',5\n'
        b'"a mug with \'coffee\' written on it",6,unexpected extra cell\n'
    )


def test_hostile_corpus_builds_and_accounts_for_every_row(tmp_path):
    _hostile_jsonl(tmp_path / "quality.jsonl")
    _hostile_csv(tmp_path / "text.csv")
    name, data = resolve_recipe("tiny", sources=[f"quality={tmp_path / 'quality.jsonl'}", f"text={tmp_path / 'text.csv'}"],
                                overrides=["on_shortfall=warn"])
    build(name, data, tmp_path / "out", progress=False)
    manifest = read_manifest(tmp_path / "out")
    counts = manifest["counts"]
    assert counts["rows_read"] == counts["kept"] + counts["rejected"]
    by_uri = {s["uri"]: s for s in manifest["sources"]}
    jsonl = by_uri[str(tmp_path / "quality.jsonl")]
    # the final newline ends the last row; the empty line inside is a row (rejected)
    assert jsonl["rows_read"] == 45 and jsonl["records"] + jsonl["rejected"] == 45
    assert by_uri[str(tmp_path / "text.csv")]["rows_read"] == 6
    rejected = read_records(tmp_path / "out", "rejected")
    reasons = " | ".join(r["reason"] for r in rejected)
    for expected in ("malformed JSON", "invalid utf-8", "empty row", "missing text field",
                     "is list, not a string", "too_long", "exact_dup"):
        assert expected in reasons, expected
    kept = [r["text"] for r in read_records(tmp_path / "out")]
    assert all("\x00" not in t for t in kept)


def _run_build(out, extra=("--quiet",)):
    # 20,000 prompts from 40,000 generated: long enough (seconds) to be killed inside each phase
    return [sys.executable, "-m", "curate.cli", "build", "--recipe", "tiny", "--size", "20000", "--output", str(out),
            *extra]


def _partial(parent, name="out"):
    """The set being assembled: `name` inside the marked staging folder beside it."""
    return next((p / name for p in parent.glob(f".{name}.partial-*") if (p / name).exists()), None)


KILL_POINTS = {
    "mid-pipeline": None,  # when the build says it starts dedup_exact (its stderr), whatever the machine's speed
    "reading": lambda parent: _partial(parent),  # the staging folder is made before the first row is read
    "rejected written, data not yet": lambda parent: (p := _partial(parent)) and (p / "rejected").exists()
    and not (p / "data").exists() and p,
}


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    subprocess.run(_run_build(out), check=True, capture_output=True)
    return out


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_minus_9_then_rerun_gives_the_uninterrupted_result(tmp_path, reference_build, point):
    out = tmp_path / "out"
    if point != "mid-pipeline":
        # a previous finished set is there too: the killed build and the rerun must replace it cleanly
        subprocess.run(_run_build(out, ["--quiet", "--seed", "5"]), check=True, capture_output=True)
    if point == "mid-pipeline":
        proc = subprocess.Popen(_run_build(out, ()), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if line.startswith("  dedup_exact on"):
                break
    else:
        proc = subprocess.Popen(_run_build(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and not KILL_POINTS[point](tmp_path):
            time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the build finished before the kill: the test would prove nothing"
    # Whatever the moment, nothing half-written passes as a finished set.
    assert not out.exists() or (out / "manifest.json").exists()
    subprocess.run(_run_build(out), check=True, capture_output=True)
    assert (out / "data/part-00000.parquet").read_bytes() == (reference_build / "data/part-00000.parquet").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_no_unsafe_loading_in_the_code():
    """Weights through safetensors or torch.load(weights_only=True), YAML through safe_load, no eval/pickle."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # The Ray engine's transport: Ray pickles every object it moves between workers anyway, and these modules
    # only unpickle what the engine's own workers pickled (records already read and checked), never file bytes.
    ray_transport = {"curate/engine_ray.py", "curate/ray_rows.py"}
    offenders = []
    for path in [*root.glob("curate/**/*.py"), *root.glob("filters/**/*.py"), *root.glob("train/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            unpickles = re.search(r"\bpickle\.loads?\(", code) and str(path.relative_to(root)) not in ray_transport
            if (re.search(r"torch\.load\(", code) and "weights_only=True" not in code) \
                    or re.search(r"yaml\.(load|unsafe_load)\((?!.*Loader=_UniqueKeyLoader\))", code) \
                    or re.search(r"(?<![.\w])(eval|exec)\(", code) \
                    or unpickles or "trust_remote_code=True" in code:
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
    from core.recipe import _UniqueKeyLoader  # the one yaml.load allowed: safe_load's loader, stricter

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


def test_rows_sharing_an_id_are_all_accounted_for_without_dedup(tmp_path):
    pool = tmp_path / "twice.txt"
    pool.write_text("".join(f"a lighthouse on a cliff number {i}\n" * 2 for i in range(20)))
    name, data = resolve_recipe("tiny", sources=[f"quality={pool}"], overrides=["steps.dedup_exact=null", "on_shortfall=warn"])
    build(name, data, tmp_path / "out", progress=False)
    counts = read_manifest(tmp_path / "out")["counts"]
    assert counts["rows_read"] == counts["kept"] + counts["rejected"]
    balance = read_manifest(tmp_path / "out")["steps"][-1]
    assert balance["in"] == balance["kept"] + balance["dropped"]


def test_a_new_write_clears_only_what_killed_writers_left_beside_the_output(tmp_path):
    import json
    import socket

    from core.fileio import STAGING_MARKER, staging_path, swap_into_place

    out = tmp_path / "export"
    killed = ("import os, sys; from pathlib import Path; from core.fileio import staging_path, _marked_folder; "
              "out = Path(sys.argv[1]); (staging_path(out) / 'half.txt').write_text('x'); "
              "(_marked_folder(out, 'old') / 'export').mkdir(); os._exit(0)")  # dies mid-write, between the renames
    subprocess.run([sys.executable, "-c", killed, str(out)], check=True)
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert len(list(tmp_path.glob(".export.*"))) == 2
    # Hidden siblings that only look like leftovers: a user's, another output's, a live writer's, another host's
    (tmp_path / f".export.partial-{dead_pid}").mkdir()  # no marker: not written by t5shrink
    (tmp_path / ".export.old-backup").mkdir()
    (tmp_path / ".export.partial-draft").write_text("notes")
    for name, pid, host in ((".export.partial-live", os.getppid(), socket.gethostname()),
                            (".export.partial-remote", int(dead_pid), "another-host"),
                            (".exports.partial-x", int(dead_pid), socket.gethostname())):
        (tmp_path / name).mkdir()
        marker = {"writer": "t5shrink", "pid": pid, "host": host, "target": name.split(".")[1]}
        (tmp_path / name / STAGING_MARKER).write_text(json.dumps(marker))
    staging = staging_path(out)
    (staging / "model.txt").write_text("new")
    swap_into_place(staging, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".export.old-backup", f".export.partial-{dead_pid}", ".export.partial-draft", ".export.partial-live",
        ".export.partial-remote", ".exports.partial-x", "export"]
    assert sorted(p.name for p in out.iterdir()) == ["model.txt"]  # the marker stays outside the output


def test_output_that_is_a_file_or_the_current_folder_is_refused(tmp_path, monkeypatch):
    from curate.curated_set import OutputError, write_curated

    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(OutputError, match="is a file"):
        write_curated(tmp_path / "afile", [], [], {})
    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path.parent)):
        with pytest.raises(OutputError, match="is the current folder or holds it"):
            write_curated(out, [], [], {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_writer_killed_between_the_two_renames_loses_nothing(tmp_path):
    from core.fileio import staging_path, swap_into_place

    out = tmp_path / "export"
    out.mkdir()
    (out / "model.txt").write_text("old")
    killed = ("import os, sys; from pathlib import Path; from core.fileio import _marked_folder; "
              "out = Path(sys.argv[1]); os.rename(out, _marked_folder(out, 'old') / out.name); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed, str(out)], check=True)
    assert not out.exists()
    staging = staging_path(out)  # the next write puts the old output back first ...
    assert (out / "model.txt").read_text() == "old"
    (staging / "model.txt").write_text("new")
    swap_into_place(staging, out)  # ... and then replaces it as usual
    assert (out / "model.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["export"]
