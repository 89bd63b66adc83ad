"""Property tests of every XDR type the protocols declare: the argument and result types of
every procedure of NFSv3, MOUNT (v1 and v3), the portmapper and rpcbind (v2, v3, v4) and the
control program, and the RPC message itself.

Values are drawn from strategies derived from the type descriptions of xdr/codec.py (no
strategy written per type), and each type must:
- give a value back from its encoding, and the same bytes again from that value;
- refuse every strict prefix of an encoding with XdrError (nothing else, and at once);
- decode random bytes, or an encoding with bytes flipped, to a value or XdrError, nothing else,
  and a value so decoded encodes and decodes back to itself;
- refuse a declared length or count beyond the bytes present before allocating for it: any
  word of an encoding set to 0xFFFFFFFF (or another large value) decodes within a small
  memory bound.

REALIZE_FUZZ_EXAMPLES (default 6) sets the number of examples per type and property.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdr import control, mount, nfs3, portmap, rpc
from xdr.codec import (
    Arm,
    Array,
    Enum,
    FixedOpaque,
    LinkedList,
    Opaque,
    Optional,
    StructType,
    Union,
    XdrError,
    XdrType,
    _Bool,
    _Scalar,
    _Void,
    as_type,
    decode,
    encode,
)

pytestmark = pytest.mark.inproc

EXAMPLES = int(os.environ.get("REALIZE_FUZZ_EXAMPLES", "6"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
# Strategies draw short variable-length data, plus the declared maximum when it is small.
SHORT = 24
FULL_UP_TO = 255
# Encodings longer than this have their prefixes (and words) checked at a stride.
EVERY_BYTE_UP_TO = 512
WORDS_CHECKED = 32
# What decoding an encoding of a few hundred bytes may allocate, whatever lengths it claims.
ALLOCATION_BOUND = 256 * 1024

TABLES: dict[str, dict[int, tuple[str, Any, Any]]] = {
    "nfs3": nfs3.PROCEDURES,
    "mount3": mount.PROCEDURES,
    "mount1": mount.PROCEDURES_V1,
    "pmap2": portmap.PMAP_PROCEDURES,
    "rpcb3": portmap.RPCB3_PROCEDURES,
    "rpcb4": portmap.RPCB4_PROCEDURES,
    "control": control.PROCEDURES,
}
MODULES = (rpc, nfs3, mount, portmap, control)


def _protocol_types() -> dict[str, XdrType[Any]]:
    """Every distinct procedure argument and result type, and the RPC message's, by name."""
    found: dict[int, tuple[str, XdrType[Any]]] = {}
    for table_name, table in TABLES.items():
        for name, args, res in table.values():
            for role, t in (("args", args), ("res", res)):
                xdr_type = as_type(t)
                found.setdefault(id(xdr_type), (f"{table_name}.{name}.{role}", xdr_type))
    for cls in (rpc.rpc_msg, rpc.call_body, rpc.authsys_parms, rpc.opaque_auth):
        found.setdefault(id(cls.XDR), (f"rpc.{cls.__name__}", cls.XDR))
    return dict(found.values())


TYPES = _protocol_types()


def _struct_classes() -> dict[int, type]:
    """Classes declared with @xdr_struct, by their XdrType: a hand-written codec installed as
    `cls.XDR` (fattr3, wcc_attr) is still described by the class's fields."""
    classes: dict[int, type] = {}
    for module in MODULES:
        for value in vars(module).values():
            if isinstance(value, type) and dataclasses.is_dataclass(value):
                xdr_type = getattr(value, "XDR", None)
                if isinstance(xdr_type, XdrType):
                    classes[id(xdr_type)] = value
    return classes


STRUCT_CLASSES = _struct_classes()
_strategies: dict[int, st.SearchStrategy[Any]] = {}


def _bounded_binary(maximum: int, size: int | None = None) -> st.SearchStrategy[bytes]:
    if size is not None:
        return st.binary(min_size=size, max_size=size)
    short = st.binary(max_size=min(maximum, SHORT))
    if maximum <= FULL_UP_TO:
        return st.one_of(short, st.binary(min_size=maximum, max_size=maximum))
    return short


def _fields(cls: type) -> list[XdrType[Any]]:
    return [as_type(f.metadata["xdr"]) for f in dataclasses.fields(cls)]


def values(t: Any) -> st.SearchStrategy[Any]:
    """A strategy of valid values of XDR type `t`, from its description."""
    xdr_type = as_type(t)
    key = id(xdr_type)
    if key not in _strategies:
        _strategies[key] = _derive(xdr_type)
    return _strategies[key]


def _derive(t: XdrType[Any]) -> st.SearchStrategy[Any]:
    if isinstance(t, _Scalar):
        return st.integers(t.lo, t.hi)
    if isinstance(t, _Bool):
        return st.booleans()
    if isinstance(t, _Void):
        return st.none()
    if isinstance(t, Enum):
        return st.sampled_from(list(t.cls))
    if isinstance(t, FixedOpaque):
        return _bounded_binary(t.size, t.size)
    if isinstance(t, Opaque):
        return _bounded_binary(t.maximum)
    if isinstance(t, Optional):
        return st.none() | values(t.inner)
    if isinstance(t, Array | LinkedList):
        return st.lists(values(t.inner), max_size=min(t.maximum, 3))
    if isinstance(t, Union):
        return _union_values(t)
    if isinstance(t, StructType):
        return st.builds(t.cls, *[values(field) for _, field in t.specs])
    if id(t) in STRUCT_CLASSES:
        cls = STRUCT_CLASSES[id(t)]
        return st.builds(cls, *[values(field) for field in _fields(cls)])
    # A fixed-size array (`T name[n]`) declared outside the codec.
    inner, size = getattr(t, "inner", None), getattr(t, "size", None)
    if isinstance(inner, XdrType) and isinstance(size, int):
        return st.lists(values(inner), min_size=size, max_size=size)
    raise TypeError(f"no strategy for {t!r}: describe it with xdr/codec.py's types")


def _union_values(t: Union) -> st.SearchStrategy[Arm]:
    if isinstance(t.disc, Enum):
        tags: list[Any] = list(t.disc.cls)
    else:
        tags = sorted(t.arms)
    arms = []
    for tag in tags:
        arm = t.arms.get(int(tag), t.default)
        if arm is not None:
            arms.append(values(arm).map(lambda v, tag=tag: Arm(tag, v)))
    if t.default is not None and not isinstance(t.disc, Enum):
        assert isinstance(t.disc, _Scalar)
        other = st.integers(t.disc.lo, t.disc.hi).filter(lambda n: n not in t.arms)
        arms.append(st.tuples(other, values(t.default)).map(lambda pair: Arm(*pair)))
    return st.one_of(arms)


def _encodings(t: XdrType[Any]) -> st.SearchStrategy[tuple[Any, bytes]]:
    return values(t).map(lambda v: (v, encode(t, v)))


def _decodes_or_refuses(t: XdrType[Any], data: bytes) -> None:
    """Decoding `data` gives a value or raises XdrError; anything else fails the test. A
    value decoded is one the encoder takes and gives back (nothing out of range or too long).
    """
    try:
        value = decode(t, data)
    except XdrError:
        return
    assert decode(t, encode(t, value)) == value


type_names = pytest.mark.parametrize("name", sorted(TYPES))


def test_every_procedure_type_has_a_strategy() -> None:
    for name, t in TYPES.items():
        assert values(t) is not None, name
    assert len(TYPES) > 60  # every table was read


@type_names
def test_round_trip_and_prefixes(name: str) -> None:
    t = TYPES[name]

    @PROPERTY
    @given(_encodings(t))
    def check(pair: tuple[Any, bytes]) -> None:
        value, data = pair
        decoded = decode(t, data)
        assert decoded == value
        assert encode(t, decoded) == data
        # A stride of 3 still cuts inside every kind of 4-byte unit.
        step = 1 if len(data) <= EVERY_BYTE_UP_TO else 3
        for end in range(0, len(data), step):
            with pytest.raises(XdrError):
                decode(t, data[:end])

    check()


@type_names
def test_garbage_decodes_or_is_refused(name: str) -> None:
    t = TYPES[name]

    @PROPERTY
    @given(st.binary(max_size=512))
    def random_bytes(data: bytes) -> None:
        _decodes_or_refuses(t, data)

    @PROPERTY
    @given(_encodings(t), st.lists(st.tuples(st.integers(0), st.integers(0, 255)), max_size=6))
    def flipped_bytes(pair: tuple[Any, bytes], flips: list[tuple[int, int]]) -> None:
        data = bytearray(pair[1])
        for position, value in flips:
            if data:
                data[position % len(data)] = value
        _decodes_or_refuses(t, bytes(data))

    random_bytes()
    flipped_bytes()


# Lengths and counts a hostile peer declares: all ones, the largest int32, just past 2 MiB.
HUGE = (0xFFFFFFFF, 0x7FFFFFFF, 0x00200001)


@type_names
def test_declared_lengths_beyond_the_data_allocate_nothing(name: str) -> None:
    t = TYPES[name]

    @PROPERTY
    @given(_encodings(t))
    def check(pair: tuple[Any, bytes]) -> None:
        data = pair[1]
        words = len(data) // 4
        stride = max(1, words // WORDS_CHECKED)
        tracemalloc.start()
        try:
            for offset in range(0, words * 4, stride * 4):
                for huge in HUGE:
                    lying = data[:offset] + struct.pack(">I", huge) + data[offset + 4 :]
                    tracemalloc.reset_peak()
                    _decodes_or_refuses(t, lying)
                    _, peak = tracemalloc.get_traced_memory()
                    assert peak < ALLOCATION_BOUND, f"{peak} bytes for word {offset // 4}"
        finally:
            tracemalloc.stop()

    check()


def _variable_length_types() -> dict[str, XdrType[Any]]:
    """Every Opaque, Array and LinkedList reachable from the protocol types."""
    found: dict[int, tuple[str, XdrType[Any]]] = {}
    seen: set[int] = set()

    def walk(t: XdrType[Any], where: str) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if isinstance(t, Opaque | Array | LinkedList):
            found.setdefault(id(t), (where, t))
        children: list[XdrType[Any]] = []
        if isinstance(t, Optional | Array | LinkedList):
            children = [t.inner]
        elif isinstance(t, Union):
            children = [*t.arms.values(), *([t.default] if t.default else [])]
        elif isinstance(t, StructType):
            children = [field for _, field in t.specs]
        elif id(t) in STRUCT_CLASSES:
            children = _fields(STRUCT_CLASSES[id(t)])
        elif isinstance(getattr(t, "inner", None), XdrType):
            children = [t.inner]  # type: ignore[attr-defined]
        for child in children:
            walk(child, where)

    for name, t in TYPES.items():
        walk(t, name)
    return {f"{where}:{type(t).__name__}#{i}": t for i, (where, t) in enumerate(found.values())}


VARIABLE = _variable_length_types()


@pytest.mark.parametrize("name", sorted(VARIABLE))
@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x7FFFFFFF, 1 << 24])
def test_a_length_beyond_the_bytes_fails_before_allocating(name: str, length: int) -> None:
    """The issue's case: a huge length with four bytes after it."""
    data = struct.pack(">I", length) + b"\1\2\3\4"
    tracemalloc.start()
    try:
        with pytest.raises(XdrError):
            decode(VARIABLE[name], data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def test_variable_length_types_were_found() -> None:
    assert len(VARIABLE) >= 10
