"""JSON values to and from the types a task's signature names: dataclasses,
lists, dicts, optionals, enums and the JSON scalars. A value that does not
fit is an `InputError` naming where (`input.users[3].email`)."""

from __future__ import annotations

import dataclasses
import enum
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


def from_json(value: Any, tp: Any, path: str) -> Any:
    """`value` (parsed JSON) as a `tp`, or an `InputError`."""
    if tp is Any or tp is object or tp is None and value is None:
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise InputError(f"{path}: expected null, got {_describe(value)}")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return from_json(value, arm, path)
            except InputError as e:
                errors.append(str(e))
        raise InputError(errors[0] if len(errors) == 1 else f"{path}: {_describe(value)} fits none of {tp}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise InputError(f"{path}: expected one of {list(args)!r}, got {value!r}")
    if origin in (list, typing.List, tuple) or tp in (list, tuple):
        if not isinstance(value, list):
            raise InputError(f"{path}: expected a list, got {_describe(value)}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise InputError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(from_json(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [from_json(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(f"{path}: expected an object, got {_describe(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: from_json(v, item, f"{path}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(value, tp, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = [m.value for m in tp]
            raise InputError(f"{path}: expected one of {allowed!r}, got {value!r}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{path}: expected a boolean, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InputError(f"{path}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(f"{path}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise InputError(f"{path}: expected a string, got {_describe(value)}")
    # Any other annotation is taken as it comes.
    return value


def _dataclass(value: Any, tp: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected an object, got {_describe(value)}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise InputError(
            f"{path}: unknown field {unknown[0]!r} (expected {', '.join(sorted(fields)) or 'none'})"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = from_json(value[name], hints.get(name, Any), f"{path}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{path}.{name}: missing")
    return tp(**kwargs)


def to_json(value: Any) -> Any:
    """A task's return value as plain JSON data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        raise TypeError("bytes are not JSON: decode them or encode them as base64")
    return value


class _Misfit(Exception):
    """Raised by a compiled decoder; the slow path says where and why."""


Decoder = Callable[[Any], Any]
_decoders: dict[Any, Decoder] = {}


def _identity(value: Any) -> Any:
    return value


def decoder(tp: Any) -> Decoder:
    """A fast `from_json` for `tp`, built once per type (at build time when
    the `@task` is defined, so it is part of the component's snapshot). It
    raises `_Misfit` without a message: `decode` then asks `from_json`."""
    try:
        return _decoders[tp]
    except (KeyError, TypeError):
        pass
    built = _build(tp)
    try:
        _decoders[tp] = built
    except TypeError:
        pass
    return built


def decode(value: Any, tp: Any, dec: Decoder, path: str) -> Any:
    """`value` as a `tp` through `dec`; an `InputError` naming where if it
    does not fit."""
    try:
        return dec(value)
    except _Misfit:
        from_json(value, tp, path)  # raises the InputError that says where
        raise InputError(f"{path}: does not fit {tp}") from None


def _scalar(*kinds: type) -> Decoder:
    def dec(value: Any) -> Any:
        if type(value) in kinds:
            return value
        raise _Misfit

    return dec


def _build(tp: Any) -> Decoder:
    if tp is Any or tp is object:
        return _identity
    if tp is None or tp is type(None):
        return _scalar(type(None))
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        arms = [decoder(a) for a in args if a is not type(None)]
        nullable = type(None) in args

        def union(value: Any) -> Any:
            if value is None and nullable:
                return None
            for arm in arms:
                try:
                    return arm(value)
                except _Misfit:
                    pass
            raise _Misfit

        return union
    if origin is typing.Literal:
        allowed = list(args)

        def literal(value: Any) -> Any:
            if value in allowed:
                return value
            raise _Misfit

        return literal
    if origin in (list, typing.List, tuple) or tp in (list, tuple):
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return lambda value: from_json(value, tp, "input")
        item = decoder(args[0]) if args else _identity
        as_tuple = origin is tuple or tp is tuple

        def sequence(value: Any) -> Any:
            if type(value) is not list:
                raise _Misfit
            out = value if item is _identity else [item(v) for v in value]
            return tuple(out) if as_tuple else out

        return sequence
    if origin is dict or tp is dict:
        item = decoder(args[1]) if len(args) == 2 else _identity

        def mapping(value: Any) -> Any:
            if type(value) is not dict:
                raise _Misfit
            return value if item is _identity else {k: item(v) for k, v in value.items()}

        return mapping
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_decoder(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        enum_type = tp

        def member(value: Any) -> Any:
            try:
                return enum_type(value)
            except ValueError:
                raise _Misfit from None

        return member
    if tp is bool:
        return _scalar(bool)
    if tp is int:

        def integer(value: Any) -> Any:
            if type(value) is int:
                return value
            if type(value) is float and value.is_integer():
                return int(value)
            raise _Misfit

        return integer
    if tp is float:

        def number(value: Any) -> Any:
            if type(value) is float:
                return value
            if type(value) is int:
                return float(value)
            raise _Misfit

        return number
    if tp is str:
        return _scalar(str)
    return _identity


def _dataclass_decoder(tp: type) -> Decoder:
    fields: list[tuple[str, Decoder | None, bool]] = []
    names: set[str] = set()

    def dataclass(value: Any) -> Any:
        if not fields and not names:
            _fill()
        if type(value) is not dict:
            raise _Misfit
        if not value.keys() <= names:
            raise _Misfit
        kwargs = {}
        for name, dec, required in fields:
            if name in value:
                kwargs[name] = dec(value[name]) if dec is not None else value[name]
            elif required:
                raise _Misfit
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
