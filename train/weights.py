"""Reading model files without trusting them: safetensors headers, tensors, torch state and JSON.

Every error is one ValueError (or FileNotFoundError) line that names the file and says what to do, so
`train`'s CLI prints it as is. A safetensors header is parsed here, not by the library: its 8-byte length
is checked against the file's size (and safetensors' own 100 MB limit) before anything is read, and
the tensors' byte ranges against the data that is actually there, so a truncated or hostile file is
refused after reading a few bytes, never after allocating what it claims.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from core.errors import one_line

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
               "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}
WEIGHT_STEMS = ("model", "diffusion_pytorch_model")  # transformers' and diffusers' weight file names
RESTORE = "restore it from a good copy or re-export it"


class Header(NamedTuple):
    shapes: dict[str, tuple[int, ...]]  # tensor name -> shape, in the file's order
    metadata: dict[str, str]


def read_json(path: Path, what: str = "a JSON file") -> Any:
    """A JSON file's value; a missing file is FileNotFoundError, an unreadable one ValueError, both naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected {what})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: not valid JSON ({one_line(exc)}); {RESTORE}") from None


def read_header(path: Path) -> Header:
    """Names and shapes of a .safetensors file's tensors, read from its header alone (bounded)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{path}: not a safetensors file (only {size} bytes); {RESTORE}")
            length = int.from_bytes(head, "little")
            if length > min(MAX_HEADER, size - 8):  # checked before reading: the length may be hostile
                raise ValueError(f"{path}: not a safetensors file (header length {length} in a {size}-byte file); "
                                 f"{RESTORE}")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or one_line(exc)})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: damaged safetensors header ({one_line(exc)}); {RESTORE}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: damaged safetensors header (not UTF-8); {RESTORE}") from None
    return _parse_header(path, header, data_bytes=size - 8 - length)


def _parse_header(path: Path, header: Any, data_bytes: int) -> Header:
    if not isinstance(header, dict):
        raise ValueError(f"{path}: damaged safetensors header (not a JSON object); {RESTORE}")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: damaged safetensors header (__metadata__ is not a map of strings); {RESTORE}")
    shapes, end = {}, 0
    for name, info in header.items():
        try:
            dtype, shape, (begin, stop) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (all(type(n) is int and n >= 0 for n in [*shape, begin, stop]) and begin <= stop
                  and (dtype not in DTYPE_BYTES or (stop - begin) == math.prod(shape) * DTYPE_BYTES[dtype]))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"{path}: damaged safetensors header (tensor {name!r}: bad dtype, shape or offsets); {RESTORE}")
        shapes[name] = tuple(shape)
        end = max(end, stop)
    if end > data_bytes:  # the usual damage: a copy or download cut off
        raise ValueError(f"{path}: truncated (its tensors need {end} data bytes, the file holds {data_bytes}); {RESTORE}")
    return Header(shapes, {str(k): v for k, v in metadata.items()})


def load_safetensors(path: Path, finite: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, its header checked first; with `finite`, a NaN/inf anywhere
    is an error naming the first such tensor (damaged weights must not train, score or ship)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be loaded ({one_line(exc)}); {RESTORE}") from None
    if finite:
        check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: tensor {name} holds NaN or inf values (damaged or diverged weights); "
                             "use an earlier checkpoint")


def load_torch(path: Path, what: str) -> Any:
    """torch.load(weights_only=True) of a file we wrote, its refusals (a pickle of anything else, a
    truncated zip) turned into one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected {what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...: all mean "not ours"
        raise ValueError(f"{path}: not a loadable {what} ({one_line(exc, 120)}); {RESTORE}") from None


def weight_files(folder: Path) -> tuple[list[Path], Path | None]:
    """(the .safetensors files of a model folder, the shard index naming them or None). transformers
    writes model.safetensors, diffusers diffusion_pytorch_model.safetensors, each with a
    `.index.json` when sharded; the shards an index names are checked (plain names inside the folder,
    each present). ([], None) when the folder has none of these."""
    folder = Path(folder)
    for stem in WEIGHT_STEMS:
        if (folder / f"{stem}.safetensors").is_file():
            return [folder / f"{stem}.safetensors"], None
    index = next((folder / f"{stem}.safetensors.index.json" for stem in WEIGHT_STEMS
                  if (folder / f"{stem}.safetensors.index.json").is_file()), None)
    if index is None:
        return [], None
    data = read_json(index, "a shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: no weight_map of tensor -> shard file; {RESTORE}")
    names = sorted(set(weight_map.values()))
    bad = next((n for n in names if Path(n).name != n or not n.endswith(".safetensors")), None)
    if bad is not None:
        raise ValueError(f"{index}: shard {bad!r} is not a .safetensors file name inside {folder}; fix the index")
    missing = next((n for n in names if not (folder / n).is_file()), None)
    if missing is not None:
        raise FileNotFoundError(f"{index}: shard {missing} is missing from {folder}; download or restore it")
    return [folder / n for n in names], index


def folder_shapes(folder: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    """(tensor name -> shape over all weight files, how to name them in messages); headers only."""
    files, index = weight_files(folder)
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        shapes.update(read_header(file).shapes)
    if index is not None:  # every tensor the index promises must be in its shard, or loading fails later
        absent = next((k for k in read_json(index)["weight_map"] if k not in shapes), None)
        if absent is not None:
            raise ValueError(f"{index}: tensor {absent} is in no shard; {RESTORE}")
        return shapes, f"{index.name} ({len(files)} shards)"
    return shapes, files[0].name if files else ""


# ---- any model folder: config.json bounded by the weights, before a library builds it ------------

# num_layers, num_single_layers, num_hidden_layers, layers_per_block, transformer_layers_per_block, ...
_COUNT_KEY = re.compile(r"(?:^|_)layers(?:_|$)|(?:^|_)(?:blocks|depth)$")
_HEADS_KEY = re.compile(r"(?:^|_)heads$")  # num_heads, num_attention_heads
_HEAD_DIM_KEY = re.compile(r"^(?:attention_head_dim|head_dim|d_kv)$")
MAX_CONFIG_INT = 65_536  # every other integer a config holds (widths, vocabularies, positions) in tiny models


def check_config_bounds(folder: Path) -> None:
    """Refuse a component's config.json whose integers its own weights cannot back. Libraries build the
    module tree from config.json before reading a weight (on the meta device, but one Python object per
    module), so `num_layers: 10000000` would exhaust the machine first. The bounds, from the headers only:
    a layer count (num_layers, layers_per_block, ...) at most the longest stack of numbered modules in the
    weights; heads x head width at most 4 x the largest tensor dimension; any other integer, in a list
    too, at most max(65,536, 16 x that dimension). A folder whose weights are not safetensors gets fixed
    caps instead."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "a model config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'}: not a JSON object; fix config.json")
    shapes, source = folder_shapes(folder)
    longest = _longest_stack(shapes) if shapes else 1_024
    widest = max((max(s) for s in shapes.values() if s), default=0) if shapes else 65_536
    cap = max(MAX_CONFIG_INT, 16 * widest)
    fix = "fix config.json or pair it with its own weights"
    for key, value in config.items():
        if type(value) is int and _COUNT_KEY.search(key) and "decoder" not in key and value > max(longest, 1):
            held = f"{source} holds at most {longest} numbered layers in any stack" if shapes else "that is absurd"
            raise ValueError(f"{folder}: config.json {key}={value:,} but {held}; {fix}")
        for item in (v for v in (value if isinstance(value, list) else [value]) if type(v) is int):
            if item > cap:
                raise ValueError(f"{folder}: config.json {key}={item:,} is larger than its weights can back "
                                 f"(at most {cap:,}); {fix}")
    heads = next((v for k, v in config.items() if _HEADS_KEY.search(k) and type(v) is int), None)
    width = next((v for k, v in config.items() if _HEAD_DIM_KEY.search(k) and type(v) is int), None)
    if heads is not None and width is not None and heads * width > 4 * max(widest, 1_024):
        raise ValueError(f"{folder}: config.json gives {heads:,} heads of {width:,}, wider than its weights "
                         f"(largest dimension {widest:,}); {fix}")


def _longest_stack(shapes: dict[str, tuple[int, ...]]) -> int:
    """The most numbered modules any list holds ("transformer_blocks.0." ... ".18." -> 19)."""
    stacks: dict[str, set[int]] = {}
    for name in shapes:
        parts = name.split(".")
        for i, part in enumerate(parts[1:], 1):
            if part.isdigit():
                stacks.setdefault(".".join(parts[:i]), set()).add(int(part))
    return max(map(len, stacks.values()), default=0)
