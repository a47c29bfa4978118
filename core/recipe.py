"""Recipes: YAML data with a strict schema and `--set a.b=value` overrides.

Shared by curation (`recipes/curate/*.yaml`) and training (`recipes/train/*.yaml`).
A schema is a nested dict whose leaves are the allowed types; a key not in the
schema is an error that names the key's full path. `ANY_KEY` lets a mapping take
free keys (e.g. the names of pipeline steps, whose own keys the step checks).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, describe_value, did_you_mean

ANY_KEY = "*"


def recipe_dir(kind: str) -> Path:
    """Folder of shipped recipes of a kind ("curate" or "train"), installed or not. Found beside this
    package, not by importing `recipes`: a `recipes/` folder in the current directory would win that
    import under `python -m` and hide the shipped ones."""
    return Path(__file__).resolve().parents[1] / "recipes" / kind


def list_recipes(kind: str) -> dict[str, str]:
    """name -> one-line description (the first line of the recipe's `description`)."""
    found = {}
    for path in sorted(recipe_dir(kind).glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        found[path.stem] = next(iter(str(data.get("description", "")).strip().splitlines()), "")
    return found


def recipe_table(kind: str) -> str:
    """The shipped recipes of a kind, a name and its description a line (`curate recipes`, `train recipes`)."""
    found = list_recipes(kind)
    width = max(map(len, found), default=0)
    return "\n".join(f"{name:<{width}}  {description}" for name, description in found.items())


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error: PyYAML keeps the last
    silently, so a recipe edited in two places would run with half the edit."""


def _mapping_without_repeats(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: construct_mapping flattens it
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def load_recipe(name_or_path: str, kind: str) -> tuple[str, dict[str, Any]]:
    """Return (name, data) for a shipped recipe name or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and not path.exists():
        raise ConfigError(f"{path}: no such recipe file")
    if path.suffix not in (".yaml", ".yml"):
        path = recipe_dir(kind) / f"{name_or_path}.yaml"
        if not path.exists():
            known = ", ".join(list_recipes(kind)) or "none"
            raise ConfigError(f"no {kind} recipe named {describe_value(name_or_path)} "
                              f"(shipped: {known}; or pass a .yaml path)")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is not a recipe (at most {MAX_RECIPE_BYTES:,})")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level")
    return path.stem, data


MAX_RECIPE_BYTES = 1 << 20
MAX_RECIPE_VALUES = 100_000  # values a recipe may hold once its aliases are expanded (shipped ones: < 1,000)


def load_yaml(text: str) -> Any:
    """YAML as yaml.safe_load reads it, refusing what would make it a hazard downstream: a key given
    twice in a mapping, aliases that expand to more than MAX_RECIPE_VALUES values (a "billion laughs"
    bomb: 600 bytes that validation, hashing or an error message would expand to gigabytes), an alias
    that contains itself, and nesting deeper than Python can walk."""
    try:
        return _parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {' '.join(str(exc).split())[:300]}") from exc


def _parse_yaml(text: str) -> Any:
    """load_yaml, except that invalid YAML raises yaml.YAMLError (a --set value then stays a string)."""
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_RECIPE_VALUES:
            raise ConfigError(f"its aliases expand to more than {MAX_RECIPE_VALUES:,} values; "
                              "write the values out instead of nesting aliases")
        return loader.construct_document(node) if node is not None else None
    except RecursionError as exc:
        raise ConfigError("nested too deeply to read") from exc
    except ConfigError:
        raise
    except ValueError as exc:  # what PyYAML's constructors let through, e.g. an integer of 5,000 digits
        raise ConfigError(f"a value cannot be read ({str(exc)[:200]})") from exc
    finally:
        loader.dispose()


def _expanded_size(root: yaml.Node) -> int:
    """How many values the node graph holds with every alias expanded, counted without expanding (each
    shared node's size is computed once)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ConfigError("an alias refers to a value that contains it (a recursive structure)")
        open_nodes.add(key)
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        sizes[key] = 1 + sum(size(child) for child in children)
        open_nodes.discard(key)
        return sizes[key]

    return size(root)


FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'a.b=3' -> (['a', 'b'], 3); the value is read as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {describe_value(item)} is not KEY=VALUE")
    key, raw = item.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override {describe_value(item)} has an empty key")
    try:
        value = _parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: the plain string
    except ConfigError as exc:
        raise ConfigError(f"--set {key.strip()}: {exc}") from exc
    if isinstance(value, str) and FLOAT_RE.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string; on a command line it is a number
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str], schema: dict[str, Any]) -> dict[str, Any]:
    """Apply `--set` overrides; a key the schema does not allow fails, naming it.
    A number indexes into a list: `sources.quality.0.text_column=TEXT`, `stages.1.steps=10`."""
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        spec: Any = schema
        for depth, part in enumerate(path):
            full = ".".join(path[: depth + 1])
            last = depth == len(path) - 1
            if isinstance(spec, list):
                if not part.isdigit() or not isinstance(node, list) or int(part) > len(node):
                    raise ConfigError(f"{full!r} in --set {item}: expected an index 0..{len(node) if isinstance(node, list) else 0}")
                key: Any = int(part)
                if key == len(node):
                    node.append({})
                spec = spec[0]
            else:
                if isinstance(spec, dict) and part not in spec and ANY_KEY not in spec:
                    raise ConfigError(f"unknown key {full!r} in --set {item}{did_you_mean(part, _keys(spec))}")
                key = part
                spec = spec.get(part, spec.get(ANY_KEY)) if isinstance(spec, dict) else None
            if last:
                node[key] = value
            else:
                child = node[key] if isinstance(node, list) else node.get(key)
                if not isinstance(child, (dict, list)):
                    child = [] if isinstance(spec, list) else {}
                    node[key] = child
                node = child
    validate(data, schema)
    return data


def _keys(schema: dict[str, Any]) -> list[str]:
    return [k for k in schema if k != ANY_KEY]


def validate(data: Any, schema: Any, where: str = "") -> None:
    """Check keys and leaf types against the schema (see module docstring). A null
    value is always allowed: it means "unset" (e.g. a step disabled with KEY=null)."""
    if data is None:
        return
    if isinstance(schema, dict):
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'recipe'} must be a mapping, got {type(data).__name__}")
        for key, value in data.items():
            full = f"{where}.{key}" if where else str(key)
            if key in schema:
                validate(value, schema[key], full)
            elif ANY_KEY in schema:
                validate(value, schema[ANY_KEY], full)
            else:
                raise ConfigError(f"unknown key {full!r}{did_you_mean(key, _keys(schema))} "
                                  f"(allowed: {', '.join(_keys(schema))})")
    elif isinstance(schema, list):
        if not isinstance(data, list):
            raise ConfigError(f"{where} must be a list, got {type(data).__name__}")
        for i, item in enumerate(data):
            validate(item, schema[0], f"{where}.{i}")
    elif schema is Any:
        return
    elif isinstance(schema, tuple):
        if not isinstance(data, schema) or (bool not in schema and isinstance(data, bool)):
            names = "/".join(t.__name__ for t in schema)
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(data, str) and FLOAT_RE.fullmatch(data) else ""
            raise ConfigError(f"{where} must be {names}, got {describe_value(data)}{hint}")
    elif isinstance(schema, type):
        validate(data, (schema,), where)


def recipe_hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- the key reference (`curate recipes --keys`, `train recipes --keys`, the README) ------------

_PLACEHOLDERS = {"sources": "<criterion>", "quotas": "<criterion>", "categories": "<category>",
                 "score_columns": "<score name>", "steps": "<step>", "config": "<T5Config field>"}


def schema_keys(schema: Any, defaults: Any = None, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted key, type, default or None) for every leaf a schema allows, in schema order. Free keys
    show as a placeholder (<criterion>, <step>, ...), list items as <i>."""
    if isinstance(schema, dict):
        rows = []
        for key, sub in schema.items():
            name = _PLACEHOLDERS.get(prefix.rsplit(".", 1)[-1], "<name>") if key == ANY_KEY else key
            default = defaults.get(key) if isinstance(defaults, dict) and key != ANY_KEY else None
            if isinstance(sub, dict) or (isinstance(sub, list) and isinstance(sub[0], dict)):
                rows += schema_keys(sub, default, f"{prefix}.{name}" if prefix else name)
            else:
                rows.append((f"{prefix}.{name}" if prefix else name, type_label(sub), default))
        return rows
    # a list of mappings (stages.<i>.name, ...); `defaults` may hold the defaults of each item
    return schema_keys(schema[0], defaults if isinstance(defaults, dict) else None, f"{prefix}.<i>")


def type_label(schema: Any) -> str:
    """A schema leaf (or a step option's annotation) in words."""
    if typing.get_origin(schema) in (typing.Union, types.UnionType):
        schema = tuple(arm for arm in typing.get_args(schema) if arm is not type(None))
        schema = schema[0] if len(schema) == 1 else schema
    if isinstance(schema, list):
        return f"list of {type_label(schema[0])}"
    if typing.get_origin(schema) is list:
        return f"list of {type_label((typing.get_args(schema) or (Any,))[0])}"
    if isinstance(schema, tuple):
        return "number" if set(schema) == {int, float} else " or ".join(type_label(t) for t in schema)
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(schema, "any")


def render_keys(rows: list[tuple[str, str, Any]], helps: dict[str, str] | None = None) -> str:
    """The rows as aligned text: key, type, the default when there is one, and then, indented on a line of
    its own, what the key is for when `helps` says."""
    width = max((len(key) for key, _, _ in rows), default=0)
    lines = []
    for key, kind, default in rows:
        shown = "" if default is None else f"  (default: {json.dumps(default)})"
        lines.append(f"{key:<{width}}  {kind}{shown}")
        if helps and helps.get(key):
            lines.append(f"{'':<{width}}    {helps[key]}")
    return "\n".join(lines)
