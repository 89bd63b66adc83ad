"""XDR (RFC 4506) codec: the type combinators every protocol module is declared with.

A protocol type is an `XdrType` with `pack(packer, value)` and `unpack(unpacker)`. Structs are
dataclasses declared with `@xdr_struct` and fields made by `xf(type)`; discriminated unions
decode to `Arm(tag, value)`. Decoding is strict and bounded: every variable-length field has a
maximum, and any malformed input raises `XdrError`, which the RPC layer answers with
GARBAGE_ARGS. Nothing allocates more than the input holds.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

import xdrlib3

T = TypeVar("T")

UINT32_MAX = 0xFFFFFFFF


class XdrError(Exception):
    """The bytes are not a valid encoding of the expected type."""


class Packer(xdrlib3.Packer):
    """xdrlib3's packer plus raw writes for precompiled fixed-layout encoders."""

    def pack_raw(self, data: bytes) -> None:
        self._Packer__buf.write(data)  # type: ignore[attr-defined]


class Unpacker(xdrlib3.Unpacker):
    """xdrlib3's unpacker plus raw reads of an exact byte count."""

    def unpack_raw(self, n: int) -> bytes:
        data = self.unpack_fopaque(n)
        if len(data) != n:
            raise XdrError("truncated")
        return data

    def remaining(self) -> int:
        return len(self.get_buffer()) - self.get_position()


class XdrType(Generic[T]):
    """One XDR type: how a Python value of it is packed and unpacked."""

    def pack(self, p: Packer, v: T) -> None:
        raise NotImplementedError

    def unpack(self, u: Unpacker) -> T:
        raise NotImplementedError


def as_type(t: Any) -> XdrType[Any]:
    """Accept an XdrType or a class declared with @xdr_struct."""
    if isinstance(t, XdrType):
        return t
    xdr_type = getattr(t, "XDR", None)
    if isinstance(xdr_type, XdrType):
        return xdr_type
    raise TypeError(f"not an XDR type: {t!r}")


class _Scalar(XdrType[int]):
    def __init__(self, fmt: str, lo: int, hi: int) -> None:
        self.codec = struct.Struct(fmt)
        self.lo, self.hi = lo, hi

    def pack(self, p: Packer, v: int) -> None:
        if not self.lo <= v <= self.hi:
            raise XdrError(f"{v} out of range")
        p.pack_raw(self.codec.pack(v))

    def unpack(self, u: Unpacker) -> int:
        return self.codec.unpack(u.unpack_raw(self.codec.size))[0]


uint32 = _Scalar(">I", 0, UINT32_MAX)
int32 = _Scalar(">i", -(2**31), 2**31 - 1)
uint64 = _Scalar(">Q", 0, 2**64 - 1)
int64 = _Scalar(">q", -(2**63), 2**63 - 1)


class _Bool(XdrType[bool]):
    def pack(self, p: Packer, v: bool) -> None:
        p.pack_raw(b"\0\0\0\1" if v else b"\0\0\0\0")

    def unpack(self, u: Unpacker) -> bool:
        raw = u.unpack_raw(4)
        if raw == b"\0\0\0\0":
            return False
        if raw == b"\0\0\0\1":
            return True
        raise XdrError("bad bool")


boolean = _Bool()


class _Void(XdrType[None]):
    def pack(self, p: Packer, v: None) -> None:
        return None

    def unpack(self, u: Unpacker) -> None:
        return None


void = _Void()

E = TypeVar("E", bound=enum.IntEnum)


class Enum(XdrType[E]):
    """An XDR enum backed by a Python IntEnum; unknown values do not decode."""

    def __init__(self, cls: type[E]) -> None:
        self.cls = cls
        self.values = {int(m): m for m in cls}

    def pack(self, p: Packer, v: E) -> None:
        p.pack_int(int(v))

    def unpack(self, u: Unpacker) -> E:
        raw = u.unpack_int()
        try:
            return self.values[raw]
        except KeyError:
            raise XdrError(f"{raw} is not a {self.cls.__name__}") from None


class FixedOpaque(XdrType[bytes]):
    def __init__(self, size: int) -> None:
        self.size = size

    def pack(self, p: Packer, v: bytes) -> None:
        if len(v) != self.size:
            raise XdrError(f"expected {self.size} bytes")
        p.pack_fopaque(self.size, v)

    def unpack(self, u: Unpacker) -> bytes:
        return bytes(u.unpack_raw((self.size + 3) & ~3)[: self.size])


class Gather:
    """Opaque data held in several buffers, for encoders that send buffers as they are
    (`len` is the total; `bytes()` joins them when a copy is needed after all)."""

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts
        self.size = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class Opaque(XdrType[bytes]):
    """Variable-length opaque (or string) of at most `maximum` bytes.

    With `view=True` the value is a memoryview into the input (no copy), for bulk data.
    """

    def __init__(self, maximum: int = UINT32_MAX, *, view: bool = False) -> None:
        self.maximum = maximum
        self.view = view

    def pack(self, p: Packer, v: bytes) -> None:
        n = len(v)
        if n > self.maximum:
            raise XdrError(f"{n} bytes exceed {self.maximum}")
        p.pack_uint(n)
        p.pack_raw(bytes(v))
        if n & 3:
            p.pack_raw(b"\0" * (4 - (n & 3)))

    def unpack(self, u: Unpacker) -> bytes:
        n = u.unpack_uint()
        if n > self.maximum:
            raise XdrError(f"length {n} exceeds {self.maximum}")
        if (n + 3) & ~3 > u.remaining():
            raise XdrError("truncated")
        data = u.unpack_fopaque(n)
        return data if self.view else bytes(data)


String = Opaque


class Optional(XdrType[Any]):
    """XDR optional-data (`*T`): a bool, then the value if present."""

    def __init__(self, inner: Any) -> None:
        self.inner = as_type(inner)

    def pack(self, p: Packer, v: T | None) -> None:
        if v is None:
            p.pack_raw(b"\0\0\0\0")
        else:
            p.pack_raw(b"\0\0\0\1")
            self.inner.pack(p, v)

    def unpack(self, u: Unpacker) -> T | None:
        return self.inner.unpack(u) if boolean.unpack(u) else None


class Array(XdrType[list[T]]):
    """Counted array `T<maximum>`."""

    def __init__(self, inner: Any, maximum: int = UINT32_MAX) -> None:
        self.inner = as_type(inner)
        self.maximum = maximum

    def pack(self, p: Packer, v: list[T]) -> None:
        if len(v) > self.maximum:
            raise XdrError("array too long")
        p.pack_uint(len(v))
        for item in v:
            self.inner.pack(p, item)

    def unpack(self, u: Unpacker) -> list[T]:
        n = u.unpack_uint()
        # Every element takes at least 4 bytes, so a count beyond what is left is a lie.
        if n > self.maximum or n * 4 > u.remaining():
            raise XdrError(f"array count {n} too large")
        return [self.inner.unpack(u) for _ in range(n)]


class LinkedList(XdrType[list[T]]):
    """The RFC idiom `struct entry { ...; entry *next; }`, as a Python list."""

    def __init__(self, inner: Any, maximum: int = 1 << 20) -> None:
        self.inner = as_type(inner)
        self.maximum = maximum

    def pack(self, p: Packer, v: list[T]) -> None:
        for item in v:
            p.pack_raw(b"\0\0\0\1")
            self.inner.pack(p, item)
        p.pack_raw(b"\0\0\0\0")

    def unpack(self, u: Unpacker) -> list[T]:
        items: list[T] = []
        while boolean.unpack(u):
            if len(items) >= self.maximum:
                raise XdrError("list too long")
            items.append(self.inner.unpack(u))
        return items


class Arm(NamedTuple):
    """A decoded discriminated union: the discriminant and the selected arm's value."""

    tag: int
    value: Any = None


_NO_DEFAULT = object()


class Union(XdrType[Arm]):
    """`union switch (disc) { case A: ...; default: ... }`.

    `arms` maps discriminant values to arm types (`void` for empty arms); `default` is the
    type of the default arm, or left out when the union has none.
    """

    def __init__(self, disc: XdrType[Any], arms: dict[int, Any], default: Any = _NO_DEFAULT):
        self.disc = disc
        self.arms = {int(k): as_type(v) for k, v in arms.items()}
        self.default = None if default is _NO_DEFAULT else as_type(default)

    def _arm(self, tag: int) -> XdrType[Any]:
        arm = self.arms.get(int(tag), self.default)
        if arm is None:
            raise XdrError(f"no union arm for {tag}")
        return arm

    def pack(self, p: Packer, v: Arm) -> None:
        arm = self._arm(v.tag)
        self.disc.pack(p, v.tag)
        arm.pack(p, v.value)

    def unpack(self, u: Unpacker) -> Arm:
        tag = self.disc.unpack(u)
        return Arm(tag, self._arm(tag).unpack(u))


class StructType(XdrType[T]):
    """A struct: its fields packed in order."""

    def __init__(self, cls: type[T], specs: list[tuple[str, XdrType[Any]]]) -> None:
        self.cls = cls
        self.specs = specs

    def pack(self, p: Packer, v: T) -> None:
        for name, t in self.specs:
            t.pack(p, getattr(v, name))

    def unpack(self, u: Unpacker) -> T:
        return self.cls(*[t.unpack(u) for _, t in self.specs])


def xf(t: Any, **kwargs: Any) -> Any:
    """A struct field of XDR type `t` (dataclasses.field keyword arguments pass through)."""
    return dataclasses.field(metadata={"xdr": t}, **kwargs)


C = TypeVar("C", bound=type)


def xdr_struct(cls: C) -> C:
    """Make `cls` a dataclass and give it `cls.XDR`, its XdrType; fields are declared with xf()."""
    cls = dataclasses.dataclass(slots=True)(cls)
    specs = [(f.name, as_type(f.metadata["xdr"])) for f in dataclasses.fields(cls)]
    cls.XDR = StructType(cls, specs)  # type: ignore[attr-defined]
    return cls


def encode(t: Any, v: Any) -> bytes:
    p = Packer()
    as_type(t).pack(p, v)
    return p.get_buffer()


def decode(t: Any, data: bytes | memoryview, offset: int = 0) -> Any:
    """Decode exactly one `t` from data[offset:]; trailing bytes are an error."""
    u = Unpacker(data)
    u.set_position(offset)
    try:
        v = as_type(t).unpack(u)
    except XdrError:
        raise
    except (EOFError, xdrlib3.Error, struct.error, ValueError, OverflowError) as e:
        raise XdrError(f"malformed: {e}") from None
    if u.get_position() != len(data):
        raise XdrError("trailing bytes")
    return v


def pack_all(p: Packer, items: Iterable[tuple[Any, Any]]) -> None:
    for t, v in items:
        as_type(t).pack(p, v)


PackFn = Callable[[Packer, Any], None]
