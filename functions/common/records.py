"""Typed, validated, immutable records from plain data, with the standard library only.

The manifest and the settings are read from untrusted input at cold start; this module validates
them without a validation library on the inference function's import path (pydantic's import and
model building cost about a third of a cold start). A record is a frozen dataclass declared as
usual; ``Field`` adds its constraints, ``@check`` a rule across fields. Every problem is reported
with where it is (``features[0].name``) and the record is refused whole with a ``RecordError``, a
``ValueError``.

Types understood: str, int, float, bool, Any, Literal[...], X | None, list[X], dict[str, X], a record,
a union of records told apart by a ``discriminator`` field, and a union of scalars (kept as given).
Numbers are never read from text, nor booleans from numbers (``Settings.from_env`` parses text).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal, Self, dataclass_transform

Loc = tuple[str | int, ...]
Problems = list[tuple[Loc, str]]
Convert = Callable[[Any, Loc, Problems], Any]
_BAD = object()  # what a converter returns for a value it refused (the problem is already listed)
_SCALARS = (bool, int, float, str)


class RecordError(ValueError):
    """A record refused: every problem, each with where it is and what is wrong with it."""

    def __init__(self, record: str, problems: Problems) -> None:
        self.record, self.problems = record, problems
        super().__init__(f"{record}: " + "; ".join(f"{where(loc)}: {msg}" if loc else msg for loc, msg in problems))

    def errors(self) -> list[dict[str, Any]]:
        return [{"loc": loc, "msg": msg} for loc, msg in self.problems]


def where(loc: Loc) -> str:
    """``features[0].name`` for ("features", 0, "name")."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


@dataclasses.dataclass(frozen=True)
class Rules:
    min_length: int | None = None
    max_length: int | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    pattern: str | None = None
    discriminator: str | None = None


def Field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
          min_length: int | None = None, max_length: int | None = None, ge: float | None = None,
          gt: float | None = None, le: float | None = None, pattern: str | None = None,
          discriminator: str | None = None, description: str | None = None) -> Any:
    """A field's default and constraints (lengths of text, lists and objects; number bounds; a regular
    expression the whole text must match; the tag field of a union of records)."""
    rules = Rules(min_length, max_length, ge, gt, le, pattern, discriminator)
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"rules": rules, "description": description})


def check(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """Mark a method as a rule across fields, run once every field is valid; it raises ValueError."""
    method.__record_check__ = True  # type: ignore[attr-defined]
    return method


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class Record:
    """Base of the records: keyword construction validates (so does ``model_validate`` of a mapping);
    ``model_dump``, ``model_dump_json``, ``model_validate_json`` and ``model_copy`` as their names say."""

    model_fields: ClassVar[dict[str, Any]]  # name -> its dataclasses.Field (.default, .metadata)
    _converters: ClassVar[dict[str, Convert] | None]
    _checks: ClassVar[tuple[Callable[[Any], None], ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The fields, in declaration order from the base down (a re-declared field keeps its place); no
        # dataclass code generation: the base's methods serve every record (~6x cheaper at import).
        super().__init_subclass__(**kwargs)
        fields: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            if issubclass(klass, Record) and klass is not Record:
                fields.update(_declared(klass))
        for name, spec in fields.items():
            if isinstance(vars(cls).get(name), dataclasses.Field):
                if spec.default is dataclasses.MISSING:
                    delattr(cls, name)
                else:
                    setattr(cls, name, spec.default)
        cls.model_fields = fields
        cls._converters = None  # built on first use: the annotations name classes defined later
        checks: dict[str, Callable[[Any], None]] = {}
        for klass in reversed(cls.__mro__):
            checks.update({name: fn for name, fn in vars(klass).items() if getattr(fn, "__record_check__", False)})
        cls._checks = tuple(checks.values())

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.model_fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.model_fields)})"

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(type(self).model_validate(values).__dict__)

    @classmethod
    def prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """What a record does to its input before its fields are read (older formats): nothing here."""
        return data

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        problems: Problems = []
        record = cls._build(data, (), problems)
        if record is None:
            raise RecordError(cls.__name__, problems)
        return record

    @classmethod
    def model_validate_json(cls, text: str | bytes) -> Self:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise RecordError(cls.__name__, [((), f"not valid JSON: {exc}")]) from None
        return cls.model_validate(data)

    @classmethod
    def model_construct(cls, **values: Any) -> Self:
        """A record from trusted values, unvalidated; left-out fields take their defaults."""
        record = object.__new__(cls)
        for name, spec in cls.model_fields.items():
            value = values[name] if name in values else _default(spec)
            if value is not dataclasses.MISSING:
                record.__dict__[name] = value
        return record

    @classmethod
    def _build(cls, data: Any, loc: Loc, problems: Problems) -> Self | None:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            problems.append((loc, f"should be an object ({cls.__name__}), got {type(data).__name__}"))
            return None
        data = cls.prepare(dict(data))
        converters = cls._converters or cls._build_converters()
        before = len(problems)
        problems.extend(((*loc, key), "unknown field (extra fields are not permitted)") for key in data
                        if key not in converters)
        values: dict[str, Any] = {}
        for name, convert in converters.items():
            value = convert(data[name], (*loc, name), problems) if name in data else _default(cls.model_fields[name])
            if value is dataclasses.MISSING:
                problems.append(((*loc, name), "required"))
            values[name] = value
        if len(problems) > before:
            return None
        record = object.__new__(cls)
        record.__dict__.update(values)
        for rule in cls._checks:
            try:
                rule(record)
            except ValueError as exc:
                problems.append((loc, str(exc)))
                return None
        return record

    @classmethod
    def _build_converters(cls) -> dict[str, Convert]:
        hints = typing.get_type_hints(cls)
        converters = {name: converter(hints[name], spec.metadata.get("rules") or Rules())
                      for name, spec in cls.model_fields.items()}
        cls._converters = converters
        return converters

    def model_dump(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.model_fields}

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """JSON text; a non-finite float is written as null (it is not JSON)."""
        return json.dumps(_finite(self.model_dump()), indent=indent, ensure_ascii=False, allow_nan=False,
                          separators=None if indent is not None else (",", ":"))

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A shallow copy with some fields replaced, unvalidated (validate the result where it matters)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.__dict__.update(update or {})
        return copy


def _declared(klass: type) -> dict[str, Any]:
    """The fields a class declares itself: name -> its dataclasses.Field (default, factory, rules)."""
    fields = {}
    for name, annotation in vars(klass).get("__annotations__", {}).items():
        text = annotation if isinstance(annotation, str) else repr(annotation)
        if text.startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = vars(klass).get(name, dataclasses.MISSING)
        fields[name] = value if isinstance(value, dataclasses.Field) else dataclasses.field(default=value)
    return fields


def _default(spec: Any) -> Any:
    """A field's default (a fresh one from its factory), or MISSING where it has none."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.model_dump()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


# --- converters: one per field, built from its annotation and its rules ---------------------------------

def converter(tp: Any, rules: Rules) -> Convert:
    """Checks one value against a type and its rules; appends problems and returns _BAD when refused."""
    members = typing.get_args(tp) if _is_union(tp) else ()
    if type(None) in members:
        inner = [m for m in members if m is not type(None)]
        convert = converter(inner[0] if len(inner) == 1 else typing.Union[tuple(inner)], rules)  # noqa: UP007
        return lambda v, loc, problems: None if v is None else convert(v, loc, problems)
    base = _type_converter(tp, rules)
    limits = _limits(rules)
    if limits is None:
        return base

    def constrained(value: Any, loc: Loc, problems: Problems) -> Any:
        value = base(value, loc, problems)
        if value is _BAD:
            return value
        problem = limits(value)
        if problem is not None:
            problems.append((loc, problem))
            return _BAD
        return value

    return constrained


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _limits(rules: Rules) -> Callable[[Any], str | None] | None:
    tests: list[Callable[[Any], str | None]] = []
    if rules.min_length is not None:
        least = rules.min_length
        tests.append(lambda v: None if len(v) >= least else f"should have at least {least} {_unit(v, least)}")
    if rules.max_length is not None:
        most = rules.max_length
        tests.append(lambda v: None if len(v) <= most else f"should have at most {most} {_unit(v, most)}")
    if rules.ge is not None:
        ge = rules.ge
        tests.append(lambda v: None if v >= ge else f"should be greater than or equal to {ge}")
    if rules.gt is not None:
        gt = rules.gt
        tests.append(lambda v: None if v > gt else f"should be greater than {gt}")
    if rules.le is not None:
        le = rules.le
        tests.append(lambda v: None if v <= le else f"should be less than or equal to {le}")
    if rules.pattern is not None:
        pattern = re.compile(rules.pattern)
        whole = rules.pattern.endswith("$")  # '$' means the end of the text, never before a final newline

        def matches(v: str) -> str | None:
            m = pattern.search(v)
            return None if m and (not whole or m.end() == len(v)) else f"should match {rules.pattern!r}"

        tests.append(matches)
    if not tests:
        return None
    return lambda value: next((p for t in tests if (p := t(value)) is not None), None)


def _unit(value: Any, n: int) -> str:
    word = "character" if isinstance(value, str) else "item"
    return word if n == 1 else word + "s"


def _refuse(problems: Problems, loc: Loc, wanted: str, value: Any) -> Any:
    problems.append((loc, f"should be {wanted}, got {_kind(value)}"))
    return _BAD


def _kind(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", str: "text", list: "an array", dict: "an object",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _type_converter(tp: Any, rules: Rules) -> Convert:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return lambda v, loc, problems: v
    if tp is str:
        return lambda v, loc, problems: v if isinstance(v, str) else _refuse(problems, loc, "text", v)
    if tp is bool:
        return lambda v, loc, problems: v if type(v) is bool else _refuse(problems, loc, "a boolean", v)
    if tp is int:
        return _to_int
    if tp is float:
        return lambda v, loc, problems: (float(v) if isinstance(v, (int, float)) and type(v) is not bool
                                         else _refuse(problems, loc, "a number", v))
    if origin is Literal:
        choices = " or ".join(repr(a) for a in args)
        return lambda v, loc, problems: (v if any(v == a and type(v) is type(a) for a in args)
                                         else _refuse(problems, loc, choices, v))
    if origin is list:  # a discriminator names the tag of the items
        return _list_of(converter(args[0], Rules(discriminator=rules.discriminator)))
    if origin is dict:
        return _dict_of(converter(args[1], Rules(discriminator=rules.discriminator)))
    if isinstance(tp, type) and issubclass(tp, Record):
        return lambda v, loc, problems: _or_bad(tp._build(v, loc, problems))
    if _is_union(tp) and all(isinstance(a, type) and issubclass(a, Record) for a in args):
        if rules.discriminator is None:
            raise TypeError(f"a union of records needs a discriminator: {tp}")
        return _tagged(args, rules.discriminator)
    if _is_union(tp) and set(args) <= set(_SCALARS):
        wanted = " or ".join(_kind(a()) for a in args)
        return lambda v, loc, problems: v if type(v) in args else _refuse(problems, loc, wanted, v)
    raise TypeError(f"records do not read {tp!r}")


def _or_bad(value: Any) -> Any:
    return _BAD if value is None else value


def _to_int(value: Any, loc: Loc, problems: Problems) -> Any:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    return _refuse(problems, loc, "an integer", value)


def _list_of(item: Convert) -> Convert:
    def convert(value: Any, loc: Loc, problems: Problems) -> Any:
        if not isinstance(value, (list, tuple)):
            return _refuse(problems, loc, "an array", value)
        items = [item(v, (*loc, i), problems) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else items

    return convert


def _dict_of(item: Convert) -> Convert:
    def convert(value: Any, loc: Loc, problems: Problems) -> Any:
        if not isinstance(value, Mapping):
            return _refuse(problems, loc, "an object", value)
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            problems.append((loc, f"keys should be text, got {bad[0]!r}"))
            return _BAD
        items = {k: item(v, (*loc, k), problems) for k, v in value.items()}
        return _BAD if any(v is _BAD for v in items.values()) else items

    return convert


def _tagged(members: tuple[type[Record], ...], tag: str) -> Convert:
    by_tag = {m.model_fields[tag].default: m for m in members}
    choices = " or ".join(repr(t) for t in by_tag)

    def convert(value: Any, loc: Loc, problems: Problems) -> Any:
        if isinstance(value, members):
            return value
        if not isinstance(value, Mapping):
            return _refuse(problems, loc, "an object", value)
        kind = by_tag.get(value.get(tag)) if isinstance(value.get(tag), str) else None
        if kind is None:
            problems.append(((*loc, tag), f"should be {choices}, got {value.get(tag)!r}"))
            return _BAD
        return _or_bad(kind._build(value, loc, problems))

    return convert
