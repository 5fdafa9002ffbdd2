"""Read plain Python values (dict / list / str / numbers) out of an object array of an ``.npz``
without unpickling it.

NumPy stores an object array as a pickle, and ``np.load(..., allow_pickle=True)`` runs whatever a
crafted file puts in it (the CVPR-BiomedSegFM validation files keep their ``text_prompts`` dict this
way). Here the pickle's opcodes are *interpreted*, never executed: strings, numbers, lists, tuples
and dicts are built, the only references to code that are accepted are NumPy's array
reconstruction (``_reconstruct``, ``ndarray``, ``dtype``), recorded as inert markers and never
called, and any other opcode or reference refuses the file with :class:`UnsafeObjectArray`.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["UnsafeObjectArray", "read_object_array"]

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_PUSH_ARG = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "BINFLOAT",
    "SHORT_BINBYTES",
    "BINBYTES",
}


class UnsafeObjectArray(ValueError):
    """The object array holds something other than plain data (or a malformed pickle)."""


class _Ref:
    """An accepted global, kept as a name (never imported)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Call:
    """``func(*args)`` as recorded by REDUCE, with the BUILD state; never called."""

    def __init__(self, func: _Ref, args: tuple):
        self.func, self.args, self.state = func, args, None


def _interpret(data: bytes, where: str) -> Any:
    try:
        return _run(data, where)
    except UnsafeObjectArray:
        raise
    except Exception as exc:  # noqa: BLE001 - a crafted stream can underflow the stack, misuse a type, ...
        raise UnsafeObjectArray(
            f"{where}: malformed pickle ({type(exc).__name__}: {exc}); nothing was executed"
        ) from None


def _run(data: bytes, where: str) -> Any:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise UnsafeObjectArray(f"{where}: malformed pickle (no MARK)")
        i = marks.pop()
        items = stack[i:]
        del stack[i:]
        return items

    for op, arg, _pos in pickletools.genops(data):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name in _PUSH_ARG:
            stack.append(arg)
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "APPEND":
            v = stack.pop()
            stack[-1].append(v)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif name == "SETITEMS":
            items = pop_mark()
            for k, v in zip(items[::2], items[1::2]):
                stack[-1][k] = v
        elif name in ("STACK_GLOBAL", "GLOBAL"):
            if name == "GLOBAL":
                module, qual = arg.split(" ", 1)
            else:
                qual, module = stack.pop(), stack.pop()
            if (module, qual) not in _ALLOWED_GLOBALS:
                raise UnsafeObjectArray(
                    f"{where}: the pickled data refers to {module}.{qual}; only plain data "
                    "(text, numbers, lists, dicts) is accepted, nothing was executed"
                )
            stack.append(_Ref(module, qual))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not isinstance(func, _Ref) or not isinstance(args, tuple):
                raise UnsafeObjectArray(f"{where}: malformed pickle (REDUCE on {type(func).__name__})")
            stack.append(_Call(func, args))
        elif name == "BUILD":
            state = stack.pop()
            if not isinstance(stack[-1], _Call):
                raise UnsafeObjectArray(f"{where}: BUILD on {type(stack[-1]).__name__} is not accepted")
            stack[-1].state = state
        elif name == "STOP":
            return stack.pop()
        else:
            raise UnsafeObjectArray(f"{where}: pickle opcode {name} is not accepted in plain data")
    raise UnsafeObjectArray(f"{where}: malformed pickle (no STOP)")


def read_object_array(path: str | Path, key: str) -> Any:
    """The single object held by the 0-d (or 1-element) object array ``key`` of the ``.npz`` ``path``.

    Raises ``KeyError`` when the archive has no such array, :class:`UnsafeObjectArray` when it
    holds anything but plain data, ``ValueError`` for an unreadable archive.
    """
    path = Path(path)
    where = f"{path} ({key})"
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if f"{key}.npy" not in names:
                raise KeyError(key)
            raw = z.read(f"{key}.npy")
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from None
    fh = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    except ValueError as exc:
        raise ValueError(f"{where}: not a .npy array ({exc})") from None
    if not dtype.hasobject:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
        return arr.item() if arr.size == 1 else arr.tolist()
    try:
        top = _interpret(fh.read(), where)
    except UnsafeObjectArray:
        raise
    except Exception as exc:  # a malformed opcode stream (pickletools raises several kinds)
        raise UnsafeObjectArray(f"{where}: malformed pickle ({type(exc).__name__}: {exc})") from None
    state = top.state if isinstance(top, _Call) else None
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[4], list)):
        raise UnsafeObjectArray(f"{where}: not a pickled object array")
    objects = state[4]
    _check_plain(objects, where)
    return objects[0] if len(objects) == 1 else objects


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, (_Ref, _Call)):
        raise UnsafeObjectArray(f"{where}: holds a nested array or object; only plain data is accepted")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_plain(k, where)
            _check_plain(v, where)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_plain(v, where)
