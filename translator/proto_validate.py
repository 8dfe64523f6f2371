"""Envoy's proto constraints (protoc-gen-validate rules) checked on a resource.

Envoy validates every xDS resource against the ``validate.rules`` options in its protos
before using it and rejects (NACKs) the update when one fails.  The generated Python protos
carry the same options, so this module interprets them directly: whatever Envoy's generated
validators reject for these rules, we reject too, with the field path in the message.

Rules interpreted: string (min/max len and bytes, pattern, well-known header regexes,
prefix/suffix/contains, const, in/not_in), numeric gt/gte/lt/lte/const/in/not_in (also on
wrapper types when set), enum defined_only, message required, repeated min/max items and
item rules, duration required/gt/gte/lt/lte, required oneofs.  Extension payloads inside
``Any`` are not descended into (Envoy validates them when a filter loads them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import validate.validate_pb2 as pgv
from google.protobuf.descriptor import Descriptor, FieldDescriptor, OneofDescriptor
from google.protobuf.message import Message

from translator.errors import TranslationError

_WRAPPERS = frozenset({
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
})
_NUMERIC = ("uint32", "uint64", "int32", "int64", "sint32", "sint64", "fixed32", "fixed64",
            "sfixed32", "sfixed64", "double", "float")
# protoc-gen-validate's well-known regexes (strict RFC 7230 forms, and the non-strict forms
# that only forbid NUL, CR and LF)
_HEADER_NAME_STRICT = r"^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$"
_HEADER_VALUE_STRICT = r"^[^\x00-\x08\x0A-\x1F\x7F]*$"


def _no_nul_cr_lf(v: str) -> bool:
    return "\x00" not in v and "\n" not in v and "\r" not in v


_MSG, _LIST, _MAP = 0, 1, 2
# (value, present, where, path) -> None, raising TranslationError
Checker = Callable[[Any, bool, str, str], None]
# a compiled test: (passes(value), problem(value))
Test = tuple[Callable[[Any], Any], Callable[[Any], str]]


@dataclass(frozen=True)
class _Plan:
    rules: dict[str, Checker]  # field name -> checker of its value
    descend: dict[str, int]  # message fields whose types have rules inside -> _MSG/_LIST/_MAP
    unset_failures: tuple[tuple[FieldDescriptor, Checker], ...]  # rules an unset field breaks
    oneofs: tuple[OneofDescriptor, ...]  # required oneofs


def _rules_of(field: FieldDescriptor) -> Any:
    opts = field.GetOptions()
    return opts.Extensions[pgv.rules] if opts.HasExtension(pgv.rules) else None


def _fail(where: str, path: str, problem: str) -> None:
    raise TranslationError(where, f"{path}: {problem}")


def _string_tests(r: Any) -> list[Test]:
    t: list[Test] = []
    if r.HasField("const"):
        c = r.const
        t.append((lambda v: v == c, lambda v: f"must equal {c!r}"))
    if r.HasField("len"):
        n = r.len
        t.append((lambda v: len(v) == n, lambda v: f"length must be {n}"))
    if r.HasField("min_len"):
        lo = r.min_len
        t.append((lambda v: len(v) >= lo, lambda v: "must not be empty" if lo == 1
                  else f"must be at least {lo} characters"))
    if r.HasField("max_len"):
        hi = r.max_len
        t.append((lambda v: len(v) <= hi, lambda v: f"must be at most {hi} characters"))
    if r.HasField("min_bytes"):
        blo = r.min_bytes
        t.append((lambda v: len(v.encode()) >= blo, lambda v: f"must be at least {blo} bytes"))
    if r.HasField("max_bytes"):
        bhi = r.max_bytes
        t.append((lambda v: len(v.encode()) <= bhi, lambda v: f"must be at most {bhi} bytes"))
    if r.HasField("pattern"):
        # the patterns are fixed strings in Envoy's protos, in the RE2/Python common subset
        rx, pat = re.compile(r.pattern), r.pattern
        t.append((lambda v: rx.search(v) is not None,
                  lambda v: f"{v!r} does not match pattern {pat!r}"))
    if r.HasField("prefix"):
        pre = r.prefix
        t.append((lambda v: v.startswith(pre), lambda v: f"must start with {pre!r}"))
    if r.HasField("suffix"):
        suf = r.suffix
        t.append((lambda v: v.endswith(suf), lambda v: f"must end with {suf!r}"))
    if r.HasField("contains"):
        sub = r.contains
        t.append((lambda v: sub in v, lambda v: f"must contain {sub!r}"))
    if r.not_contains:
        nsub = r.not_contains
        t.append((lambda v: nsub not in v, lambda v: f"must not contain {nsub!r}"))
    t += _in_tests(r)
    if r.HasField("well_known_regex") and r.well_known_regex in (pgv.HTTP_HEADER_NAME,
                                                                 pgv.HTTP_HEADER_VALUE):
        strict = r.strict if r.HasField("strict") else True
        name = r.well_known_regex == pgv.HTTP_HEADER_NAME
        what = "header name" if name else "header value"
        wk: Callable[[str], Any]
        wk = (re.compile(_HEADER_NAME_STRICT if name else _HEADER_VALUE_STRICT).search
              if strict else _no_nul_cr_lf)
        t.append((wk, lambda v: f"{v!r} is not a valid HTTP {what}"))
    if r.ignore_empty:
        return [(_or_empty(p), m) for p, m in t]
    return t


def _or_empty(test: Callable[[Any], Any]) -> Callable[[Any], bool]:
    return lambda v: v == "" or bool(test(v))


def _in_tests(r: Any) -> list[Test]:
    t: list[Test] = []
    allowed, denied = list(getattr(r, "in")), list(r.not_in)
    if allowed:
        t.append((lambda v: v in allowed, lambda v: f"{v!r} must be one of {allowed}"))
    if denied:
        t.append((lambda v: v not in denied, lambda v: f"{v!r} must not be one of {denied}"))
    return t


def _range_tests(r: Any, conv: Callable[[Any], float], unit: str = "") -> list[Test]:
    t: list[Test] = []
    if r.HasField("const"):
        c = conv(r.const)
        t.append((lambda v: conv(v) == c, lambda v: f"must equal {c}{unit}"))
    lo = ("gt", conv(r.gt)) if r.HasField("gt") else ("gte", conv(r.gte)) \
        if r.HasField("gte") else None
    hi = ("lt", conv(r.lt)) if r.HasField("lt") else ("lte", conv(r.lte)) \
        if r.HasField("lte") else None
    if lo or hi:
        ops = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b,
               "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}
        sym = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        bounds = [b for b in (lo, hi) if b]
        text = " and ".join(f"{sym[op]} {x}{unit}" for op, x in bounds)
        t.append((lambda v: all(ops[op](conv(v), x) for op, x in bounds),
                  lambda v: f"{conv(v)}{unit} must be {text}"))
    return t


def _duration_s(d: Any) -> float:
    return float(d.seconds + d.nanos / 1e9)


def _compile(field: FieldDescriptor, rules: Any) -> Checker:
    """A checker for one (non-repeated) value of ``field`` under ``rules``."""
    required = rules.HasField("message") and rules.message.required  # outside "type"
    kind = rules.WhichOneof("type")
    tests: list[Test] = []
    unwrap = field.message_type is not None and field.message_type.full_name in _WRAPPERS
    if kind == "string":
        tests = _string_tests(rules.string)
    elif kind in _NUMERIC:
        r = getattr(rules, kind)
        tests = _range_tests(r, _identity) + _in_tests(r)
    elif kind == "enum":
        r = rules.enum
        if r.defined_only and field.enum_type is not None:
            defined = set(field.enum_type.values_by_number)
            tests.append((lambda v: v in defined, lambda v: f"unknown enum value {v}"))
        if r.HasField("const"):
            ec = r.const
            tests.append((lambda v: v == ec, lambda v: f"must equal {ec}"))
        tests += _in_tests(r)
    elif kind == "bool" and rules.bool.HasField("const"):
        bc = rules.bool.const
        tests.append((lambda v: v == bc, lambda v: f"must be {bc}"))
    elif kind == "duration":
        required = required or rules.duration.required
        tests = _range_tests(rules.duration, _duration_s, "s")
    elif kind == "any":
        required = required or rules.any.required

    def check(value: Any, present: bool, where: str, path: str) -> None:
        if not present:
            if required:
                _fail(where, path, "is required")
            if unwrap or field.message_type is not None:
                return  # an unset message/wrapper has no value to test
        elif unwrap:
            value = value.value
        for ok, problem in tests:
            if not ok(value):
                _fail(where, path, problem(value))

    return check


def _compile_repeated(field: FieldDescriptor, rules: Any) -> Checker:
    if rules.WhichOneof("type") != "repeated" or (
            field.message_type is not None and field.message_type.GetOptions().map_entry):
        return lambda value, present, where, path: None
    r = rules.repeated
    lo = r.min_items if r.HasField("min_items") else None
    hi = r.max_items if r.HasField("max_items") else None
    unique = r.unique and field.message_type is None
    item = _compile(field, r.items) if r.HasField("items") else None

    def check(value: Any, present: bool, where: str, path: str) -> None:
        if lo is not None and len(value) < lo:
            _fail(where, path, f"must have at least {lo} item(s)")
        if hi is not None and len(value) > hi:
            _fail(where, path, f"must have at most {hi} items")
        if unique and len(set(value)) != len(value):
            _fail(where, path, "items must be unique")
        if item is not None:
            for i, v in enumerate(value):
                item(v, True, where, f"{path}[{i}]")

    return check


_building: set[str] = set()


@functools.cache
def _plan(desc: Descriptor) -> _Plan:
    _building.add(desc.full_name)
    rules_by_name: dict[str, Checker] = {}
    descend: dict[str, int] = {}
    unset_failures: list[tuple[FieldDescriptor, Checker]] = []
    for f in desc.fields:
        rules = _rules_of(f)
        if rules is not None:
            checker = _compile_repeated(f, rules) if f.is_repeated else _compile(f, rules)
            rules_by_name[f.name] = checker
            if _fails_when_unset(f, checker):
                unset_failures.append((f, checker))
        if f.message_type is None or f.message_type.full_name in _WRAPPERS:
            continue
        if f.message_type.GetOptions().map_entry:
            if f.message_type.fields_by_name["value"].message_type is not None and \
                    f.message_type.fields_by_name["value"].message_type.full_name.startswith(
                        "google.protobuf."):
                continue
            value = f.message_type.fields_by_name["value"]
            if value.message_type is not None and _has_rules(value.message_type):
                descend[f.name] = _MAP
            continue
        if f.message_type.full_name.startswith("google.protobuf."):
            continue  # Any, Struct, Duration...: no rules inside (Any payloads load later)
        if rules is not None and rules.HasField("message") and rules.message.skip:
            continue
        if _has_rules(f.message_type):
            descend[f.name] = _LIST if f.is_repeated else _MSG
    oneofs = tuple(o for o in desc.oneofs
                   if o.GetOptions().HasExtension(pgv.required)
                   and o.GetOptions().Extensions[pgv.required])
    _building.discard(desc.full_name)
    return _Plan(rules_by_name, descend, tuple(unset_failures), oneofs)


def _unset_value(field: FieldDescriptor) -> tuple[Any, bool]:
    """(value, present) of a field left at its default."""
    if field.is_repeated:
        return [], True
    if field.message_type is not None:
        return None, False
    return field.default_value, True


def _fails_when_unset(field: FieldDescriptor, checker: Checker) -> bool:
    """Whether a field left at its default breaks its rules (a oneof member never does)."""
    if field.containing_oneof is not None:
        return False
    value, present = _unset_value(field)
    try:
        checker(value, present, "", "")
    except TranslationError:
        return True
    return False


def _has_rules(desc: Descriptor) -> bool:
    if desc.full_name in _building:
        return True  # recursive type: assume yes, the walk only follows set fields
    p = _plan(desc)
    return bool(p.rules or p.descend or p.oneofs)


def validate_message(msg: Message, where: str, path: str = "") -> None:
    """Raise TranslationError at the first protoc-gen-validate rule ``msg`` breaks."""
    plan = _plan(msg.DESCRIPTOR)
    prefix = f"{path}." if path else ""
    for oneof in plan.oneofs:
        if msg.WhichOneof(oneof.name) is None:
            _fail(where, f"{prefix}{oneof.name}", "exactly one of "
                  f"{[f.name for f in oneof.fields]} is required")
    for field, unset_check in plan.unset_failures:
        name = field.name
        if field.is_repeated:
            value = getattr(msg, name)
            if not value:
                unset_check(value, True, where, prefix + name)
        elif field.message_type is not None or field.has_presence:
            if not msg.HasField(name):
                unset_check(None, False, where, prefix + name)
        else:
            value = getattr(msg, name)
            if value == field.default_value:  # a set value is checked below
                unset_check(value, True, where, prefix + name)
    set_fields = msg.ListFields()
    # only set fields can break the remaining rules (the set oneof member included)
    rules, descend = plan.rules, plan.descend
    for field, value in set_fields:
        name = field.name
        checker = rules.get(name)
        if checker is not None:
            checker(value, True, where, prefix + name)
        how = descend.get(name)
        if how is None:
            continue
        if how == _MSG:
            validate_message(value, where, prefix + name)
        elif how == _LIST:
            for i, item in enumerate(value):
                validate_message(item, where, f"{prefix}{name}[{i}]")
        else:
            for key in value:
                validate_message(value[key], where, f"{prefix}{name}[{key!r}]")


def _identity(x: Any) -> Any:
    return x
