"""Hostile input and crash safety of `curate build` (issue: reliability)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from curate.pipeline import build, resolve_recipe
from curate.writer import read_manifest, read_records


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
    assert jsonl["rows_read"] == 44 and jsonl["records"] + jsonl["rejected"] == 44
    assert by_uri[str(tmp_path / "text.csv")]["rows_read"] == 6
    rejected = read_records(tmp_path / "out", "rejected")
    reasons = " | ".join(r["reason"] for r in rejected)
    for expected in ("malformed JSON", "invalid utf-8", "empty row", "is NoneType" if False else "missing text field",
                     "is list, not a string", "too_long", "exact_dup"):
        assert expected in reasons, expected
    kept = [r["text"] for r in read_records(tmp_path / "out")]
    assert all("\x00" not in t for t in kept)


def _run_build(out, extra=()):
    return [sys.executable, "-m", "curate.cli", "build", "--recipe", "tiny", "--output", str(out), "--quiet", *extra]


@pytest.mark.parametrize("kill_after", [0.5, 1.5, 3.0])
def test_kill_minus_9_then_rerun_gives_the_uninterrupted_result(tmp_path, kill_after):
    reference = tmp_path / "reference"
    subprocess.run(_run_build(reference), check=True, capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen(_run_build(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever the moment, nothing half-written passes as a finished set.
    assert not out.exists() or (out / "manifest.json").exists()
    subprocess.run(_run_build(out), check=True, capture_output=True)
    assert (out / "data/part-00000.parquet").read_bytes() == (reference / "data/part-00000.parquet").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


def test_no_unsafe_loading_in_the_code():
    """Weights through safetensors or torch.load(weights_only=True), YAML through safe_load, no eval/pickle."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    offenders = []
    for path in [*root.glob("curate/**/*.py"), *root.glob("filters/**/*.py"), *root.glob("train/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if (re.search(r"torch\.load\(", code) and "weights_only=True" not in code) \
                    or re.search(r"yaml\.(load|unsafe_load)\(", code) or re.search(r"(?<![.\w])(eval|exec)\(", code) \
                    or re.search(r"\bpickle\.loads?\(", code) or "trust_remote_code=True" in code:
                offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == []
