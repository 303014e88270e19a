"""Cached values as bytes, for stores shared between processes: a safe codec and signatures.

Nothing read from a shared store is ever unpickled by default. The safe codec writes a
small tagged binary form of exactly these types (a subclass would come back as its base,
so it is refused rather than silently changed):

* ``None``, ``bool``, ``int`` (any size), ``float`` (bit for bit, ``-0.0`` and NaN
  included), ``str``, ``bytes``; ``list``, ``tuple`` and ``dict`` of encodable values;
* numpy arrays by dtype, shape and raw bytes (numeric, bool, complex, datetime and
  fixed-width string dtypes; never Python objects, never ``allow_pickle``), and numpy
  scalars; arrays come back read-only, straight over the bytes read from the store;
* pydantic models, as their class path and ``model_dump_json(round_trip=True)``, decoded
  with the class's ``model_validate_json``. The class must already be imported in the
  reading process: the codec looks it up in ``sys.modules`` and never imports a module.

Decoding is plain data parsing: no ``eval``, no imports, no pickle. Whatever fails to
parse is refused. Pickle is available only on request, and then only with a signing key:
every value is sealed with an HMAC-SHA256 over the Redis key and the bytes, checked
before anything is decoded, so a value that was tampered with, signed with another key, or
copied from another key is refused and never reaches ``pickle.loads``.

The envelope around every value: magic and format (4 bytes), codec (1), flags (1), the
wall-clock time it was stored, its ttl (NaN for none) and the computation's duration
(three little-endian float64), the payload, then the 32-byte signature when signed.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import pickle
import struct
import sys
from typing import Any, Final, Protocol, final, runtime_checkable

from buttress._errors import UnencodableResultError

__all__ = ["Envelope", "Refused", "SafeCodec", "Serializer"]

_MAGIC: Final = b"BTR\x01"  # the last byte is the format version
_HEADER: Final = struct.Struct("<4sBBddd")
_SIGNED: Final = 1
_MAC_SIZE: Final = 32

SAFE: Final = 0
PICKLE: Final = 1
CUSTOM: Final = 2
_CODEC_NAMES: Final = {SAFE: "the safe codec", PICKLE: "pickle", CUSTOM: "a custom serializer"}

_U8: Final = struct.Struct("<B")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_I64: Final = struct.Struct("<q")
_F64: Final = struct.Struct("<d")

#: numpy dtype kinds the safe codec writes as raw bytes: bool, signed and unsigned
#: integers, floats, complex, timedelta64, datetime64, fixed-width bytes and unicode.
_ARRAY_KINDS: Final = frozenset("biufcmMSU")
_ALIGN: Final = 16  # array data starts at a multiple of this in the stored bytes
_MAX_DEPTH: Final = 200


@runtime_checkable
class Serializer(Protocol):
    """A custom ``serializer=`` for ``RedisStore``: ``dumps(value) -> bytes`` and back.

    ``loads`` runs on bytes read from Redis: it must be safe on untrusted input, or the
    store must be given a ``signing_key`` so that only values it signed reach it.
    """

    def dumps(self, value: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class Refused(Exception):
    """Bytes from the store that are not a value this store wrote; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Unencodable(Exception):
    def __init__(self, value: object, reason: str = "") -> None:
        super().__init__(type(value).__qualname__)
        self.value = value
        self.reason = reason
        self.path: list[str] = []  # innermost first, filled while unwinding


# --- the safe codec ---------------------------------------------------------------------


def _model_path(cls: type) -> str:
    module = cls.__module__
    if module == "__mp_main__":  # a script as multiprocessing's children import it
        module = "__main__"
    return f"{module}:{cls.__qualname__}"


def _find_class(path: str) -> type | None:
    """The class at ``module:qualname`` among modules already imported, or ``None``."""
    module_name, _, qualname = path.partition(":")
    target: Any = sys.modules.get(module_name)
    if target is None or not qualname:
        return None
    for part in qualname.split("."):
        if not part.isidentifier():  # "<locals>", generic parameters: not reachable
            return None
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if isinstance(target, type) else None


@final
class SafeCodec:
    """Encodes the supported types (see the module docstring); decodes without pickle."""

    id = SAFE

    def __init__(self) -> None:
        # pydantic model classes already checked to be findable by name in a reader
        self._models: dict[type, bytes] = {}

    # --- encoding -----------------------------------------------------------------------

    def encode(self, value: Any, out: bytearray) -> None:
        """Append ``value``'s encoding to ``out`` (whose length is the offset in the
        stored bytes, so arrays can be aligned). Raises ``_Unencodable``."""
        numpy = sys.modules.get("numpy")  # no array can exist unless numpy was imported
        pydantic = sys.modules.get("pydantic")
        self._encode(value, out, numpy, pydantic, 0)

    def _encode(self, value: Any, out: bytearray, numpy: Any, pydantic: Any, depth: int) -> None:
        kind = type(value)
        if kind is str:
            data = value.encode("utf-8", "surrogatepass")
            out += b"s"
            out += _U32.pack(len(data))
            out += data
        elif kind is int:
            if -(2**63) <= value < 2**63:
                out += b"i"
                out += _I64.pack(value)
            else:
                data = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
                out += b"I"
                out += _U32.pack(len(data))
                out += data
        elif kind is float:
            out += b"f"
            out += _F64.pack(value)
        elif value is None:
            out += b"N"
        elif kind is bool:
            out += b"T" if value else b"F"
        elif kind is bytes:
            out += b"b"
            out += _U32.pack(len(value))
            out += value
        elif kind is list or kind is tuple:
            if depth >= _MAX_DEPTH:
                raise _Unencodable(value, f"it is nested more than {_MAX_DEPTH} levels deep")
            out += b"l" if kind is list else b"t"
            out += _U32.pack(len(value))
            for index, item in enumerate(value):
                try:
                    self._encode(item, out, numpy, pydantic, depth + 1)
                except _Unencodable as exc:
                    exc.path.append(f"[{index}]")
                    raise
        elif kind is dict:
            if depth >= _MAX_DEPTH:
                raise _Unencodable(value, f"it is nested more than {_MAX_DEPTH} levels deep")
            out += b"d"
            out += _U32.pack(len(value))
            for name, item in value.items():
                try:
                    self._encode(name, out, numpy, pydantic, depth + 1)
                    self._encode(item, out, numpy, pydantic, depth + 1)
                except _Unencodable as exc:
                    exc.path.append(f"[{name!r:.40}]")
                    raise
        elif numpy is not None and kind is numpy.ndarray:
            self._encode_array(value, out, numpy)
        elif numpy is not None and isinstance(value, numpy.generic):
            dtype = value.dtype
            if kind is not dtype.type or not _plain_dtype(dtype):
                raise _Unencodable(value, "only numpy scalars of plain dtypes are encoded")
            name = dtype.str.encode("ascii")
            out += b"g"
            out += _U8.pack(len(name))
            out += name
            out += numpy.asarray(value).reshape(1).view(numpy.uint8).tobytes()
        elif pydantic is not None and isinstance(value, pydantic.BaseModel):
            self._encode_model(value, out)
        else:
            raise _Unencodable(value)

    @staticmethod
    def _encode_array(array: Any, out: bytearray, numpy: Any) -> None:
        dtype = array.dtype
        if not _plain_dtype(dtype):
            raise _Unencodable(
                array,
                f"numpy arrays of dtype {dtype} are not encoded (Python objects, records "
                "and void dtypes would need pickle)",
            )
        name = dtype.str.encode("ascii")
        out += b"a"
        out += _U8.pack(len(name))
        out += name
        out += _U8.pack(array.ndim)
        for size in array.shape:
            out += _U64.pack(size)
        pad = -(len(out) + 1) % _ALIGN
        out += _U8.pack(pad)
        out += bytes(pad)
        if array.size:
            data = numpy.ascontiguousarray(array)
            out += data.reshape(-1).view(numpy.uint8).data

    def _encode_model(self, model: Any, out: bytearray) -> None:
        cls = type(model)
        path = self._models.get(cls)
        if path is None:
            text = _model_path(cls)
            if _find_class(text) is not cls:
                raise _Unencodable(
                    model,
                    f"the pydantic model class {cls.__qualname__} cannot be found by name "
                    "in another process (define it at module level)",
                )
            path = self._models[cls] = text.encode()
        try:
            data = model.model_dump_json(round_trip=True).encode()
        except Exception as exc:  # pydantic's serialization error names the field
            raise _Unencodable(model, f"pydantic cannot serialize it to JSON: {exc}") from exc
        out += b"m"
        out += _U32.pack(len(path))
        out += path
        out += _U32.pack(len(data))
        out += data

    # --- decoding -----------------------------------------------------------------------

    def decode(self, blob: bytes, start: int, end: int) -> Any:
        """The value encoded in ``blob[start:end]``. Raises ``Refused`` for anything else."""
        try:
            reader = _Reader(blob, start, end)
            value = reader.value(0)
        except Refused:
            raise
        except Exception as exc:  # truncated, malformed, a list used as a dict key...
            raise Refused(f"malformed payload ({type(exc).__name__}: {exc})") from None
        if reader.pos != end:
            raise Refused("trailing bytes after the value")
        return value


def _plain_dtype(dtype: Any) -> bool:
    return (
        dtype.kind in _ARRAY_KINDS
        and not dtype.hasobject
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype.itemsize > 0
    )


@final
class _Reader:
    """Parses the safe codec's bytes; every length is checked against what is left."""

    __slots__ = ("blob", "end", "numpy", "pos")

    def __init__(self, blob: bytes, start: int, end: int) -> None:
        self.blob = blob
        self.pos = start
        self.end = end
        self.numpy: Any = None

    def take(self, count: int) -> int:
        """Advance by ``count`` bytes; return where they start."""
        start = self.pos
        if count < 0 or start + count > self.end:
            raise Refused("truncated payload")
        self.pos = start + count
        return start

    def u8(self) -> int:
        return int(self.blob[self.take(1)])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.blob, self.take(4))[0])

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise Refused("nested too deep")
        blob = self.blob
        tag = blob[self.take(1)]
        if tag == 0x73:  # s
            size = self.u32()
            at = self.take(size)
            return blob[at : at + size].decode("utf-8", "surrogatepass")
        if tag == 0x69:  # i
            return _I64.unpack_from(blob, self.take(8))[0]
        if tag == 0x66:  # f
            return _F64.unpack_from(blob, self.take(8))[0]
        if tag == 0x4E:  # N
            return None
        if tag == 0x54:  # T
            return True
        if tag == 0x46:  # F
            return False
        if tag == 0x62:  # b
            size = self.u32()
            at = self.take(size)
            return blob[at : at + size]
        if tag == 0x6C or tag == 0x74:  # l, t
            count = self.u32()
            if count > self.end - self.pos:  # every item takes at least one byte
                raise Refused("truncated payload")
            items = [self.value(depth + 1) for _ in range(count)]
            return items if tag == 0x6C else tuple(items)
        if tag == 0x64:  # d
            count = self.u32()
            if count > self.end - self.pos:
                raise Refused("truncated payload")
            result = {}
            for _ in range(count):
                name = self.value(depth + 1)
                result[name] = self.value(depth + 1)
            return result
        if tag == 0x49:  # I
            size = self.u32()
            at = self.take(size)
            return int.from_bytes(blob[at : at + size], "little", signed=True)
        if tag == 0x61:  # a
            return self.array()
        if tag == 0x67:  # g
            numpy = self.need_numpy()
            dtype = self.dtype(numpy)
            at = self.take(dtype.itemsize)
            return numpy.frombuffer(blob, dtype=dtype, count=1, offset=at)[0]
        if tag == 0x6D:  # m
            return self.model()
        raise Refused(f"unknown tag {tag:#04x}")

    def need_numpy(self) -> Any:
        if self.numpy is None:
            import numpy  # a core dependency; imported here only when an array is read

            self.numpy = numpy
        return self.numpy

    def dtype(self, numpy: Any) -> Any:
        size = self.u8()
        at = self.take(size)
        text = self.blob[at : at + size].decode("ascii")
        # numpy parses a dtype string as data; the result is checked before any use
        dtype = numpy.dtype(text)
        if not _plain_dtype(dtype):
            raise Refused(f"dtype {text!r} is not one the safe codec writes")
        return dtype

    def array(self) -> Any:
        numpy = self.need_numpy()
        dtype = self.dtype(numpy)
        ndim = self.u8()
        if ndim > 64:
            raise Refused("too many dimensions")
        shape = tuple(int(_U64.unpack_from(self.blob, self.take(8))[0]) for _ in range(ndim))
        self.take(self.u8())  # alignment padding
        count = math.prod(shape)
        at = self.take(count * dtype.itemsize)
        if count == 0:
            empty = numpy.empty(shape, dtype=dtype)
            empty.flags.writeable = False
            return empty
        # a read-only view straight over the bytes read from the store: no copy
        return numpy.frombuffer(self.blob, dtype=dtype, count=count, offset=at).reshape(shape)

    def model(self) -> Any:
        size = self.u32()
        at = self.take(size)
        path = self.blob[at : at + size].decode()
        size = self.u32()
        at = self.take(size)
        data = self.blob[at : at + size]
        pydantic = sys.modules.get("pydantic")
        cls: Any = _find_class(path)
        if pydantic is None or cls is None or not issubclass(cls, pydantic.BaseModel):
            raise Refused(f"{path!r} is not a pydantic model class imported in this process")
        return cls.model_validate_json(data)


# --- the envelope -----------------------------------------------------------------------


class _PickleCodec:
    id = PICKLE

    @staticmethod
    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def loads(data: bytes) -> Any:
        # reached only after the signature over these bytes has been verified
        return pickle.loads(data)


@final
class Envelope:
    """Seals values into the bytes a store keeps, and opens them again.

    Args:
        serializer: ``None`` for the safe codec, ``"pickle"`` (needs ``signing_key``), or
            a :class:`Serializer`.
        signing_key: sign every value with HMAC-SHA256 and refuse any value whose
            signature does not verify.
    """

    __slots__ = ("_custom", "_key", "_safe", "codec")

    def __init__(self, serializer: object, signing_key: bytes | None) -> None:
        self._key = signing_key
        self._safe = SafeCodec()
        self._custom: Any = None
        if serializer is None:
            self.codec = SAFE
        elif serializer == "pickle" or serializer is pickle:
            self.codec = PICKLE
            self._custom = _PickleCodec()
        else:
            self.codec = CUSTOM
            self._custom = serializer

    @property
    def signed(self) -> bool:
        return self._key is not None

    def seal(
        self,
        name: bytes,
        value: Any,
        *,
        stored_wall: float,
        ttl: float | None,
        duration: float,
        function: str,
    ) -> bytes:
        """The stored form of one entry, for the Redis key ``name``.

        Raises:
            UnencodableResultError: the codec cannot encode ``value``.
        """
        out = bytearray(_HEADER.size)
        try:
            if self.codec == SAFE:
                self._safe.encode(value, out)
            else:
                out += self._custom.dumps(value)
        except _Unencodable as exc:
            raise _unencodable_error(function, exc) from None
        except Exception as exc:  # pickle.PicklingError, a custom serializer's TypeError
            problem = _Unencodable(value, f"{_CODEC_NAMES[self.codec]} failed: {exc!r}")
            raise _unencodable_error(function, problem) from exc
        flags = _SIGNED if self._key is not None else 0
        _HEADER.pack_into(
            out,
            0,
            _MAGIC,
            self.codec,
            flags,
            stored_wall,
            math.nan if ttl is None else ttl,
            duration,
        )
        if self._key is not None:
            out += self._mac(name, out)
        return bytes(out)

    def open(self, name: bytes, blob: bytes) -> tuple[Any, float, float | None, float]:
        """``(value, stored_wall, ttl, duration)`` from stored bytes.

        Nothing is decoded before the envelope checks out: magic, format, codec, and with a
        signing key the signature. Raises ``Refused`` otherwise.
        """
        if len(blob) < _HEADER.size or not blob.startswith(_MAGIC):
            raise Refused("not a value written by buttress (no envelope)")
        _, codec, flags, stored_wall, ttl, duration = _HEADER.unpack_from(blob, 0)
        end = len(blob)
        if self._key is not None:
            if not flags & _SIGNED:
                raise Refused("unsigned, but this store requires signatures")
            end -= _MAC_SIZE
            if end < _HEADER.size or not hmac.compare_digest(
                self._mac(name, memoryview(blob)[:end]), blob[end:]
            ):
                raise Refused("bad signature (tampered, another key, or another entry)")
        elif flags & _SIGNED:
            raise Refused("signed, but this store has no signing_key to verify it")
        if codec != self.codec:
            raise Refused(
                f"written with {_CODEC_NAMES.get(codec, f'codec {codec}')}, "
                f"but this store reads {_CODEC_NAMES[self.codec]}"
            )
        if not (math.isfinite(stored_wall) and math.isfinite(duration) and duration >= 0):
            raise Refused("malformed header")
        if not (math.isnan(ttl) or ttl >= 0):
            raise Refused("malformed header")
        if codec == SAFE:
            value = self._safe.decode(blob, _HEADER.size, end)
        else:
            try:
                value = self._custom.loads(blob[_HEADER.size : end])
            except Exception as exc:
                raise Refused(f"{_CODEC_NAMES[codec]} could not load it: {exc!r}") from None
        return value, stored_wall, None if math.isnan(ttl) else ttl, duration

    def _mac(self, name: bytes, data: bytes | bytearray | memoryview) -> bytes:
        assert self._key is not None
        mac = hmac.new(self._key, name, hashlib.sha256)
        mac.update(b"\x00")
        mac.update(data)
        return mac.digest()


def _unencodable_error(function: str, exc: _Unencodable) -> UnencodableResultError:
    type_name = type(exc.value).__qualname__
    path = "result" + "".join(reversed(exc.path))
    reason = exc.reason or (
        "the safe codec encodes exactly None, bool, int, float, str, bytes, lists, tuples "
        "and dicts of them, numpy arrays and scalars, and pydantic models"
    )
    return UnencodableResultError(
        f"{function}() returned a {type_name} at {path} that RedisStore cannot store: "
        f"{reason}. Return one of those types, or give the store serializer= (a custom "
        'one, or "pickle" together with signing_key=).',
        function=function,
        type_name=type_name,
        path=path,
    )
