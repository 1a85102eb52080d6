"""One declaration, three uses: parse located YAML into dataclasses, explain errors, emit JSON Schema.

The manifest model in manifest.py is plain dataclasses. Their type hints and the
`help` in each field's metadata are all this module reads, so the loader, the error
messages, `xenspin schema` and the field table in docs/manifest.md cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from xenspin_installer.grammar import bare, grammar_of, grammars

from .errors import Loc, ManifestError
from .yamlfile import LDict, LList

MISSING = dataclasses.MISSING


def field(
    help: str, default: Any = MISSING, *, key: str | None = None, factory: Any = MISSING, path: bool = False
) -> Any:
    """A dataclass field with the help text shown in errors, schema and docs.

    path=True marks a file path: the loader makes it absolute against the file that wrote it.
    """
    meta = {"help": help, "key": key, "path": path}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name.replace("_", "-")


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The dataclass fields of cls with their resolved types (grammars kept: Annotated[str, GRAMMAR])."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def is_required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def union_args(tp: Any) -> tuple[Any, ...] | None:
    if get_origin(tp) in (Union, types.UnionType):
        return get_args(tp)
    return None


def discriminator(cls: type) -> str:
    """The key that tells one member of a union of dataclasses from another: its first field."""
    return yaml_key(fields_of(cls)[0][0])


def describe(tp: Any) -> str:
    """A short English phrase for what a value of type tp looks like."""
    tp = bare(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        inner = describe(get_args(tp)[0])
        return "a list of " + (inner[2:] + "s" if inner.startswith("a ") else inner)
    if get_origin(tp) is dict:
        return "a mapping of names to " + describe(get_args(tp)[1]).removeprefix("a ")
    args = union_args(tp)
    if args:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return describe(members[0])
        if all(dataclasses.is_dataclass(a) for a in members):
            return "a mapping with one of " + ", ".join(discriminator(a) for a in members)
        return " or ".join(describe(a) for a in members)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, (dict, LDict)):
        return "a mapping"
    if isinstance(value, (list, LList)):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{value!r}"


def parse(tp: Any, value: Any, loc: Loc, path: str, raw: str | None = None) -> Any:
    """Check value against tp and build it; raise ManifestError naming loc and path."""

    def fail(msg: str) -> typing.NoReturn:
        raise ManifestError(loc, path, msg)

    if get_origin(tp) is Annotated:
        parsed = parse(bare(tp), value, loc, path, raw)
        for g in grammars(tp):
            if not g.ok(parsed):
                fail(g.refusal(parsed))
        return parsed
    args = union_args(tp)
    if args is not None:
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return parse(members[0], value, loc, path, raw)
        return _parse_union(members, value, loc, path)
    if value is None:
        fail(f"is empty (expected {describe(tp)})")
    if tp is str:
        if isinstance(value, str):
            return value
        if raw is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            return raw
        fail(f"got {kind_of(value)} (expected a string; quote it)")
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail(f"got {kind_of(value)} (expected true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail(f"got {kind_of(value)} (expected an integer)")
    if get_origin(tp) is Literal:
        if value in get_args(tp) and isinstance(value, str):
            return value
        choices = ", ".join(repr(a) for a in get_args(tp))
        hint = did_you_mean(str(value), [str(a) for a in get_args(tp)])
        fail(f"got {kind_of(value)} (expected one of {choices}){hint}")
    if get_origin(tp) is list:
        if not isinstance(value, LList):
            fail(f"got {kind_of(value)} (expected {describe(tp)})")
        (item_tp,) = get_args(tp)
        return [parse(item_tp, v, value.loc_of(i), f"{path}[{i}]", value.raw[i]) for i, v in enumerate(value)]
    if get_origin(tp) is dict:
        if not isinstance(value, LDict):
            fail(f"got {kind_of(value)} (expected {describe(tp)})")
        key_tp, val_tp = get_args(tp)
        out = {}
        for k, v in value.items():  # keys have grammars too (component names)
            sub = f"{path}.{k}"
            out[parse(key_tp, k, value.loc_of(k), sub)] = parse(val_tp, v, value.loc_of(k), sub, value.raw[k])
        return out
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, loc, path)
    raise TypeError(f"dataschema.parse: unsupported type {tp!r}")  # a programming error, not input


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parse_union(members: list[type], value: Any, loc: Loc, path: str) -> Any:
    keys = {discriminator(m): m for m in members}
    names = ", ".join(keys)
    if not isinstance(value, LDict):
        raise ManifestError(loc, path, f"got {kind_of(value)} (expected a mapping with one of {names})")
    present = [k for k in value if k in keys]
    if not present:
        hints = [did_you_mean(k, list(keys)) for k in value]
        hint = next((h for h in hints if h), "")
        raise ManifestError(value.loc, path, f"says nothing of its kind (expected one of {names}){hint}")
    if len(present) > 1:
        raise ManifestError(
            value.loc_of(present[1]), path, f"gives both {present[0]} and {present[1]} (expected only one)"
        )
    return parse_dataclass(keys[present[0]], value, loc, path)


def parse_dataclass(cls: type, value: Any, loc: Loc, path: str) -> Any:
    if not isinstance(value, LDict):
        raise ManifestError(loc, path, f"got {kind_of(value)} (expected {describe(cls)})")
    known = {yaml_key(f): (f, tp) for f, tp in fields_of(cls)}
    for key in value:
        if key not in known:
            sub = f"{path}.{key}" if path else key
            hint = did_you_mean(key, list(known))
            raise ManifestError(
                value.loc_of(key), sub, f"unknown field{hint or ' (expected one of ' + ', '.join(known) + ')'}"
            )
    kwargs = {}
    for key, (f, tp) in known.items():
        sub = f"{path}.{key}" if path else key
        if key in value:
            kwargs[f.name] = parse(tp, value[key], value.loc_of(key), sub, value.raw.get(key))
        elif is_required(f):
            raise ManifestError(value.loc, sub, f"missing (expected {describe(tp)}: {f.metadata['help']})")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(value, path)
    return obj


# --- JSON Schema -----------------------------------------------------------------


def schema(tp: Any, defs: dict[str, Any], *, list_ops: bool = True) -> dict[str, Any]:
    """JSON Schema for one manifest file (a base or a spin: required fields are checked after merging)."""
    if get_origin(tp) is Annotated:
        out = schema(bare(tp), defs, list_ops=list_ops)
        for g in grammars(tp):
            out["pattern"] = g.pattern
        return out
    if tp is str:
        return {"type": ["string", "number"]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if get_origin(tp) is Literal:
        return {"enum": list(get_args(tp))}
    if get_origin(tp) is list:
        return {"type": "array", "items": schema(get_args(tp)[0], defs, list_ops=list_ops)}
    if get_origin(tp) is dict:
        inner = schema(get_args(tp)[1], defs, list_ops=list_ops)
        out = {"type": "object", "additionalProperties": {"anyOf": [inner, {"type": "null"}]}}
        for g in grammars(get_args(tp)[0]):
            out["propertyNames"] = {"pattern": g.pattern}
        return out
    args = union_args(tp)
    if args is not None:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return {"anyOf": [schema(members[0], defs, list_ops=list_ops), {"type": "null"}]}
        return {"oneOf": [schema(m, defs, list_ops=list_ops) for m in members]}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            props: dict[str, Any] = {}
            for f, ftp in fields_of(tp):
                key = yaml_key(f)
                g = grammar_of(ftp)
                help_ = f.metadata["help"] + (f" (expected {g.expected})" if g else "")
                props[key] = {**schema(ftp, defs, list_ops=list_ops), "description": help_}
                if list_ops and get_origin(ftp) is list:
                    props[key + "+"] = {**schema(ftp, defs), "description": f"append to {key} of the file extended"}
                    props[key + "-"] = {**schema(ftp, defs), "description": f"remove from {key} of the file extended"}
            body: dict[str, Any] = {
                "type": "object",
                "description": (tp.__doc__ or "").strip().splitlines()[0],
                "properties": props,
                "additionalProperties": False,
            }
            if getattr(tp, "DISCRIMINATED", False):
                body["required"] = [discriminator(tp)]
            defs[name] = body
        return {"$ref": f"#/$defs/{name}"}
    raise TypeError(f"dataschema.schema: unsupported type {tp!r}")


def document(cls: type, name: str, title: str, *, list_ops: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON Schema document for files of cls (Draft 2020-12) and its $defs, for the caller to tighten."""
    defs: dict[str, Any] = {}
    top = schema(cls, defs, list_ops=list_ops)
    doc = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://xenspin.invalid/schema/{name}.json",
        "title": title,
        **top,
        "$defs": defs,
    }
    return doc, defs


def markdown_table(cls: type) -> str:
    """The documentation's table of cls's fields (field, expects, meaning), generated from the model."""
    rows = ["| field | expects | meaning |", "| --- | --- | --- |"]
    for key, expects, meaning in field_table(cls):
        rows.append(f"| `{key}` | {expects} | {meaning} |")
    return "\n".join(rows)


def field_table(cls: type, prefix: str = "", seen: set[Any] | None = None) -> list[tuple[str, str, str]]:
    """Rows (field path, expected, help) for documentation, depth first, each path once."""
    seen = seen if seen is not None else set()
    rows = []
    for f, tp in fields_of(cls):
        key = prefix + yaml_key(f)
        if key in seen:
            continue
        seen.add(key)
        rows.append((key, describe(tp), f.metadata["help"]))
        nested = [tp]
        if get_origin(tp) is dict:
            nested = [get_args(tp)[1]]
            key += ".NAME"
        nested = [a for t in nested for a in (union_args(t) or (t,)) if dataclasses.is_dataclass(a)]
        for sub in nested:
            rows.extend(field_table(sub, key + ".", seen))
    return rows


def to_data(obj: Any, relative_to: Path | None = None) -> Any:
    """The model back as plain YAML/JSON data, keyed as in the manifest.

    With relative_to, path fields are made relative to it: the form that goes into
    digests and locks, so they do not depend on where the checkout lives.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f, _ in fields_of(type(obj)):
            value = getattr(obj, f.name)
            if relative_to is not None and f.metadata.get("path") and value:
                value = (
                    [os.path.relpath(v, relative_to) for v in value]
                    if isinstance(value, list)
                    else os.path.relpath(value, relative_to)
                )
            out[yaml_key(f)] = to_data(value, relative_to)
        return out
    if isinstance(obj, dict):
        return {k: to_data(v, relative_to) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_data(v, relative_to) for v in obj]
    return obj
