"""JSON values to and from the types a task's signature names: dataclasses,
lists, dicts, optionals, enums and the JSON scalars. A value that does not
fit is an `InputError` naming where (`input.users[3].email`)."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any


class InputError(ValueError):
    pass


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


class _Misfit(Exception):
    """Raised by a decoder: `reason` says what did not fit, and `where`
    collects the path to it, innermost first, as the exception goes up
    through the decoders of the containers."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.where: list[str] = []


Decoder = Callable[[Any], Any]
_decoders: dict[Any, Decoder] = {}


def _identity(value: Any) -> Any:
    return value


def decoder(tp: Any) -> Decoder:
    """The decoder of `tp`, built once per type (at build time when the
    `@task` is defined, so it is part of the component's snapshot)."""
    try:
        return _decoders[tp]
    except KeyError:
        pass
    except TypeError:
        return _build(tp)  # not hashable: not kept

    def forward(value: Any) -> Any:
        return decoder(tp)(value)

    # `forward` stands for `tp` while it is built, so that a type that
    # refers to itself (`children: list[Node]` in `Node`) gets it, instead
    # of building `tp` again for ever.
    _decoders[tp] = forward
    try:
        built = _build(tp)
    except BaseException:
        del _decoders[tp]
        raise
    _decoders[tp] = built
    return built


def decode(value: Any, dec: Decoder, path: str) -> Any:
    """`value` (parsed JSON) through `dec`; an `InputError` naming where
    if it does not fit."""
    try:
        return dec(value)
    except _Misfit as e:
        raise InputError(f"{path}{''.join(reversed(e.where))}: {e.reason}") from None


def from_json(value: Any, tp: Any, path: str) -> Any:
    """`value` (parsed JSON) as a `tp`, or an `InputError`."""
    return decode(value, decoder(tp), path)


def _expected(what: str, value: Any) -> _Misfit:
    return _Misfit(f"expected {what}, got {_describe(value)}")


def _scalar(kind: type, what: str) -> Decoder:
    def dec(value: Any) -> Any:
        if type(value) is kind:
            return value
        raise _expected(what, value)

    return dec


def _build(tp: Any) -> Decoder:
    if tp is Any or tp is object:
        return _identity
    if tp is None or tp is type(None):
        return _scalar(type(None), "null")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _union(tp, args)
    if origin is typing.Literal:
        allowed = list(args)

        def literal(value: Any) -> Any:
            if value in allowed:
                return value
            raise _Misfit(f"expected one of {allowed!r}, got {value!r}")

        return literal
    if origin in (list, typing.List, tuple) or tp in (list, tuple):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return _fixed_tuple([decoder(a) for a in args])
        return _sequence(decoder(args[0]) if args else _identity, origin is tuple or tp is tuple)
    if origin is dict or tp is dict:
        if len(args) != 2:
            return _mapping(_identity, _identity)
        return _mapping(_key_decoder(tp, args[0]), decoder(args[1]))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp
        allowed = [m.value for m in tp]

        def member(value: Any) -> Any:
            try:
                return enum_type(value)
            except ValueError:
                raise _Misfit(f"expected one of {allowed!r}, got {value!r}") from None

        return member
    if tp is bool:
        return _scalar(bool, "a boolean")
    if tp is int:

        def integer(value: Any) -> Any:
            if type(value) is int:
                return value
            if type(value) is float and value.is_integer():
                return int(value)
            raise _expected("an integer", value)

        return integer
    if tp is float:

        def number(value: Any) -> Any:
            if type(value) is float:
                return value
            if type(value) is int:
                return float(value)
            raise _expected("a number", value)

        return number
    if tp is str:
        return _scalar(str, "a string")
    # Any other annotation is taken as it comes.
    return _identity


def _union(tp: Any, args: tuple[Any, ...]) -> Decoder:
    arms = [decoder(a) for a in args if a is not type(None)]
    nullable = type(None) in args

    def union(value: Any) -> Any:
        if value is None and nullable:
            return None
        misfits = []
        for arm in arms:
            try:
                return arm(value)
            except _Misfit as e:
                misfits.append(e)
        # One arm: its own words; several: which value fitted none.
        if len(misfits) == 1:
            raise misfits[0]
        raise _Misfit(f"{_describe(value)} fits none of {tp}")

    return union


def _sequence(item: Decoder, as_tuple: bool) -> Decoder:
    def sequence(value: Any) -> Any:
        if type(value) is not list:
            raise _expected("a list", value)
        if item is _identity:
            out = value
        else:
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(item(v))
                except _Misfit as e:
                    e.where.append(f"[{i}]")
                    raise
        return tuple(out) if as_tuple else out

    return sequence


def _fixed_tuple(items: list[Decoder]) -> Decoder:
    def fixed(value: Any) -> Any:
        if type(value) is not list:
            raise _expected("a list", value)
        if len(value) != len(items):
            raise _Misfit(f"expected {len(items)} items, got {len(value)}")
        out = []
        for i, (item, v) in enumerate(zip(items, value)):
            try:
                out.append(item(v))
            except _Misfit as e:
                e.where.append(f"[{i}]")
                raise
        return tuple(out)

    return fixed


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")


def _integer_key(key: str) -> int:
    # An integer as JSON writes one, as serde_json reads an integer key.
    if _INTEGER.fullmatch(key):
        return int(key)
    raise _Misfit(f"expected an integer key, got {key!r}")


def _key_decoder(tp: Any, key: Any) -> Decoder:
    """The decoder of the keys of `tp`, a `dict[key, ...]`. JSON's keys are
    strings: a key type that no string can be is refused here, when the
    `@task` is defined, rather than when a job runs."""
    if key is Any or key is object or key is str:
        return _identity
    if key is int:
        return _integer_key
    if typing.get_origin(key) is typing.Literal:
        values: tuple[Any, ...] = typing.get_args(key)
    elif isinstance(key, type) and issubclass(key, enum.Enum):
        values = tuple(m.value for m in key)
    else:
        values = ()
    if values and all(type(v) is str for v in values):
        return decoder(key)
    raise TypeError(
        f"{tp}: a dict key is a JSON string, so its type is str, int, "
        f"or an Enum or Literal of strings, not {key.__name__ if isinstance(key, type) else key}"
    )


def _mapping(key: Decoder, item: Decoder) -> Decoder:
    def mapping(value: Any) -> Any:
        if type(value) is not dict:
            raise _expected("an object", value)
        if key is _identity and item is _identity:
            return value
        out = {}
        for k, v in value.items():
            try:
                out[key(k)] = item(v)
            except _Misfit as e:
                e.where.append(f".{k}")
                raise
        return out

    return mapping


def _dataclass_decoder(tp: type) -> Decoder:
    fields: list[tuple[str, Decoder | None, bool]] = []
    names: set[str] = set()

    def dataclass(value: Any) -> Any:
        if not fields and not names:
            _fill()
        if type(value) is not dict:
            raise _expected("an object", value)
        if not value.keys() <= names:
            unknown = next(k for k in value if k not in names)
            raise _Misfit(
                f"unknown field {unknown!r} (expected {', '.join(sorted(names)) or 'none'})"
            )
        kwargs = {}
        for name, dec, required in fields:
            if name in value:
                try:
                    kwargs[name] = dec(value[name]) if dec is not None else value[name]
                except _Misfit as e:
                    e.where.append(f".{name}")
                    raise
            elif required:
                missing = _Misfit("missing")
                missing.where.append(f".{name}")
                raise missing
        return tp(**kwargs)

    def _fill() -> None:
        # Resolved on first use as well as at definition: a field's type may
        # be a class defined further down the module.
        hints = typing.get_type_hints(tp)
        for f in dataclasses.fields(tp):
            if not f.init:
                continue
            dec = decoder(hints.get(f.name, Any))
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields.append((f.name, None if dec is _identity else dec, required))
            names.add(f.name)

    try:
        _fill()
    except NameError:
        fields.clear()
        names.clear()
    return dataclass


# Compact, UTF-8 as it is, no NaN (not JSON); made once (`json.dumps` with
# options builds an encoder per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def dumps(value: Any, what: str) -> str:
    """`value` as JSON text, converted by `to_json`: a task's output, a
    child job's input, an HTTP request's `json`. A value that is not JSON
    (bytes, a set, NaN) is a `TypeError` or `ValueError` naming `what`."""
    try:
        return _ENCODER.encode(to_json(value))
    except TypeError as e:
        raise TypeError(f"{what} is not JSON: {e}") from None
    except ValueError as e:
        raise ValueError(f"{what} is not JSON: {e}") from None


def to_json(value: Any) -> Any:
    """A task's return value as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, dict):
        return {k if type(k) is str else _key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        raise TypeError("bytes are not JSON: decode them or encode them as base64")
    return value


def _key(key: Any) -> str:
    """A dict key as JSON writes it: an enum as its value, `True` as "true",
    `None` as "null", a number as `json.dumps` writes it."""
    if isinstance(key, enum.Enum):
        return _key(key.value)
    if isinstance(key, str):
        return key
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float)):
        return json.dumps(key, allow_nan=False)
    raise TypeError(
        f"a dict key must be a str, int, float, bool, None or an enum, not {type(key).__name__}"
    )
