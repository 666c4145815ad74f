"""Check API calls and answers against PVE's official API schema.

The schema (`apidata-pve-9.1.json.gz`, the tree pve-docs' API viewer is
built from) describes, per path and method, the accepted parameters and
the JSON schema of `data` in the answer. This module reads it and reports
disagreements as readable strings; an empty list means "conforms".

Rules, as PVE's JSONSchema validator applies them:
- a parameter must be listed under `parameters.properties` unless
  `additionalProperties` is true; its string value must parse as the
  declared type (integer, number, boolean 0/1/true/false/yes/no/on/off),
  fit `enum`, `pattern`, `minimum`/`maximum`;
- returned data must have the declared type; PVE's JSON encodes booleans
  as 0/1, so both are accepted for `boolean`; `null` is accepted for
  optional values only;
- objects must carry every property not marked `optional`; a listed
  family `net[n]` covers `net0`, `net1`, ...;
- properties the schema does not list: an error where `additionalProperties`
  is 0; allowed where it is true (or a schema, which the extra values must
  then satisfy) or where the schema lists no properties at all (PVE's
  "object of anything"). Where `additionalProperties` is simply absent,
  PVE's own validator allows extras and real PVE does return some (e.g.
  `endtime` in `/cluster/tasks`); the checker is stricter and reports them
  unless the caller names them in `allowed_extra` — so every field beyond the
  schema is a deliberate, listed decision.
"""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.shared_data import PVE_API_SCHEMA

SCHEMA_PATH = PVE_API_SCHEMA

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    info: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.info.get("parameters") or {})

    @property
    def returns(self) -> dict[str, Any]:
        return dict(self.info.get("returns") or {})


class ApiSchema:
    """Index of (method, path template) -> endpoint description."""

    def __init__(self, tree: list[dict[str, Any]]) -> None:
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        stack = list(tree)
        while stack:
            node = stack.pop()
            for method, info in (node.get("info") or {}).items():
                self.endpoints[(method, node["path"])] = Endpoint(method, node["path"], info)
            stack.extend(node.get("children") or [])
        self._by_shape: list[tuple[re.Pattern[str], str]] = []
        for _method, template in self.endpoints:
            regex = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
            self._by_shape.append((re.compile(regex), template))

    @classmethod
    def load(cls, path: Path = SCHEMA_PATH) -> ApiSchema:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return cls(json.load(fh))

    def get(self, method: str, template: str) -> Endpoint | None:
        return self.endpoints.get((method.upper(), template))

    def match(self, method: str, path: str) -> Endpoint | None:
        """The endpoint a concrete path (`/nodes/pve1/qemu/100/status/current`)
        belongs to; literal segments win over `{placeholders}`."""
        best: Endpoint | None = None
        best_literals = -1
        for regex, template in self._by_shape:
            if not regex.match(path):
                continue
            ep = self.endpoints.get((method.upper(), template))
            if ep is None:
                continue
            literals = sum(1 for seg in template.split("/") if seg and not seg.startswith("{"))
            if literals > best_literals:
                best, best_literals = ep, literals
        return best


def _type_of(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    return t if isinstance(t, str) else None


def _num(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pattern(pattern: Any) -> re.Pattern[str] | None:
    """PVE's patterns are Perl regexes; `(?^:...)` / `(?^i:...)` (Perl's
    "default flags" groups) become Python's `(?:...)` / `(?i:...)`."""
    if not isinstance(pattern, str):
        return None
    text = re.sub(r"\(\?\^([a-z]*):", lambda m: f"(?{m[1]}:" if m[1] else "(?:", pattern)
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"schema pattern {pattern!r} not understood: {exc}") from exc


def check_param_value(name: str, value: str, schema: dict[str, Any]) -> list[str]:
    """Does the string `value` parse as PVE would parse parameter `name`?"""
    problems: list[str] = []
    kind = _type_of(schema)
    where = f"parameter '{name}'"
    parsed: float | None = None
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", value.strip()):
            problems.append(f"{where}: {value!r} is not an integer")
        else:
            parsed = float(int(value))
    elif kind == "number":
        parsed = _num(value)
        if parsed is None:
            problems.append(f"{where}: {value!r} is not a number")
    elif kind == "boolean":
        if value.lower() not in _TRUE | _FALSE:
            problems.append(f"{where}: {value!r} is not a boolean")
    elif kind == "string":
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            problems.append(f"{where}: {value!r} not in enum {enum}")
        regex = _pattern(schema.get("pattern"))
        if regex is not None and not regex.fullmatch(value):
            problems.append(f"{where}: {value!r} does not match pattern {schema['pattern']}")
        max_len = _num(schema.get("maxLength"))
        if max_len is not None and len(value) > max_len:
            problems.append(f"{where}: longer than {max_len:g}")
    if parsed is not None:
        low, high = _num(schema.get("minimum")), _num(schema.get("maximum"))
        if low is not None and parsed < low:
            problems.append(f"{where}: {value} below minimum {low:g}")
        if high is not None and parsed > high:
            problems.append(f"{where}: {value} above maximum {high:g}")
    return problems


def check_params(endpoint: Endpoint, params: dict[str, str]) -> list[str]:
    """Every parameter sent must be one the schema knows, with a value of
    its type; every required parameter must be present."""
    spec = endpoint.parameters
    props: dict[str, Any] = dict(spec.get("properties") or {})
    problems: list[str] = []
    for name, value in params.items():
        schema = props.get(name)
        if schema is None:
            if not spec.get("additionalProperties"):
                problems.append(f"parameter '{name}': not in the schema of "
                                f"{endpoint.method} {endpoint.template}")
            continue
        problems.extend(check_param_value(name, value, schema))
    return problems


def required_params(endpoint: Endpoint) -> list[str]:
    props = dict(endpoint.parameters.get("properties") or {})
    return sorted(n for n, s in props.items() if not s.get("optional"))


Allowed = dict[str, frozenset[str]]


def _generic(where: str) -> str:
    return re.sub(r"\[\d+\]", "[]", where)


def check_value(
    value: Any, schema: dict[str, Any], where: str = "data", allowed_extra: Allowed | None = None
) -> list[str]:
    """Does `value` (decoded JSON) satisfy the PVE return `schema`?
    `allowed_extra` maps a location (`data[]`, `data.cpuinfo`) to property
    names accepted there although the schema does not list them."""
    extra = allowed_extra or {}
    kind = _type_of(schema)
    if value is None:
        if kind in (None, "null") or schema.get("optional"):
            return []
        return [f"{where}: null where {kind} is required"]
    if kind is None or kind == "any":
        return []
    if kind == "null":
        return [f"{where}: expected null, got {type(value).__name__}"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{where}: expected string, got {type(value).__name__} {value!r}"]
        enum = schema.get("enum")
        if enum is not None and value not in enum:
            return [f"{where}: {value!r} not in enum {enum}"]
        return []
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: expected integer, got {type(value).__name__} {value!r}"]
        return []
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{where}: expected number, got {type(value).__name__} {value!r}"]
        return []
    if kind == "boolean":
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return []
        return [f"{where}: expected boolean (0/1), got {type(value).__name__} {value!r}"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected array, got {type(value).__name__}"]
        items = schema.get("items")
        problems: list[str] = []
        if isinstance(items, dict):
            for i, item in enumerate(value):
                problems.extend(check_value(item, items, f"{where}[{i}]", extra))
        return problems
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{where}: expected object, got {type(value).__name__}"]
        return _check_object(value, schema, where, extra)
    return [f"{where}: schema type {kind!r} unknown to the checker"]


def _family(name: str, props: dict[str, Any]) -> dict[str, Any] | None:
    """`net0` belongs to a listed `net[n]` family."""
    m = re.fullmatch(r"([a-z_-]+?)(\d+)", name)
    if m is None:
        return None
    sub = props.get(f"{m[1]}[n]")
    return sub if isinstance(sub, dict) else None


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], where: str, allowed_extra: Allowed
) -> list[str]:
    props: dict[str, Any] = dict(schema.get("properties") or {})
    extra = schema.get("additionalProperties")
    problems: list[str] = []
    for name, sub in props.items():
        if name.endswith("[n]"):
            continue
        if name in value:
            problems.extend(check_value(value[name], sub, f"{where}.{name}", allowed_extra))
        elif not sub.get("optional"):
            problems.append(f"{where}: required property '{name}' missing")
    accepted = allowed_extra.get(_generic(where), frozenset())
    for name in sorted(set(value) - set(props)):
        family = _family(name, props)
        if family is not None:
            problems.extend(check_value(value[name], family, f"{where}.{name}", allowed_extra))
        elif isinstance(extra, dict):
            problems.extend(check_value(value[name], extra, f"{where}.{name}", allowed_extra))
        elif extra is not None and not extra:
            problems.append(f"{where}: property '{name}' is not allowed (additionalProperties 0)")
        elif props and not extra and name not in accepted:
            problems.append(f"{where}: property '{name}' is not in the schema")
    return problems


def check_response(
    endpoint: Endpoint, data: Any, allowed_extra: Allowed | None = None
) -> list[str]:
    return check_value(data, endpoint.returns, "data", allowed_extra)


def declared_properties(schema: dict[str, Any], where: str = "data") -> set[tuple[str, str]]:
    """Every (location, property) a return schema lists, locations written
    generically (`data[]`, `data.cpuinfo`); `net[n]` families are left out
    (a guest has as many as it has)."""
    out: set[tuple[str, str]] = set()
    kind = _type_of(schema)
    if kind == "array" and isinstance(schema.get("items"), dict):
        out |= declared_properties(schema["items"], f"{where}[]")
    elif kind == "object":
        for name, sub in dict(schema.get("properties") or {}).items():
            if name.endswith("[n]") or not isinstance(sub, dict):
                continue
            out.add((where, name))
            out |= declared_properties(sub, f"{where}.{name}")
    return out


def present_properties(value: Any, where: str = "data") -> set[tuple[str, str]]:
    """Every (location, property) an answer carries, with the locations
    written as `declared_properties` writes them."""
    out: set[tuple[str, str]] = set()
    if isinstance(value, list):
        for item in value:
            out |= present_properties(item, f"{where}[]")
    elif isinstance(value, dict):
        for name, sub in value.items():
            out.add((where, name))
            out |= present_properties(sub, f"{where}.{name}")
    return out


def missing_properties(endpoint: Endpoint, answers: list[Any]) -> list[tuple[str, str]]:
    """Properties the schema lists that none of `answers` returned, where
    their parent object was returned at least once (a nested schema under
    an absent optional property says nothing about what was served)."""
    seen: set[tuple[str, str]] = set()
    for data in answers:
        seen |= present_properties(data)
    parents = {"data"} | {f"{loc}.{name}" for loc, name in seen}
    parents |= {p + "[]" for p in parents}
    return sorted((loc, name) for loc, name in declared_properties(endpoint.returns)
                  if (loc, name) not in seen and loc in parents)
