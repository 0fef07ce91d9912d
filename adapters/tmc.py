"""Taobao message service (TMC) wire format: the binary frames sent over its WebSocket.

The OMS opens the WebSocket (oms/channels/tmall_worker.py); this module only turns frames into
values and back, so it can be tested without a network and reused by the fake server in tests.

Frame layout (little-endian), from tmcpy `messageio.py` / `messagetype.py` (the published source of
tmcpy 0.3.3, a port of the official top-sdk-java TMC client) and mapleflow/tmcpy3
`tests/test_messageio.py` (byte-exact sample):

    byte  protocol_version (2)
    byte  message_type     0 CONNECT, 1 CONNECTACK, 2 SEND, 3 SENDACK
    then headers, each an int16 header type:
        0 endOfHeaders
        1 custom        counted-string key + typed value
        2 statusCode    int32
        3 statusPhrase  counted string
        4 flag          int32
        5 token         counted string
    counted string = int32 length + UTF-8 bytes
    typed value    = byte format (0 void, 1 countedString, 2 byte, 3 int16, 4 int32, 5 int64,
                     6 date as int64 ms, 7 byteArray) + value

Client -> server: CONNECT with custom headers app_key, group_name, timestamp (ms), sign, sdk;
SEND with the token and `__kind` 1 (pull request) or 2 (confirm, with `id`).
Server -> client: CONNECTACK with the token (statusCode != 0 means refused); SEND frames whose
custom headers carry a message: id, topic, content (JSON text), pub_time, pub_app_key, user_id,
user_nick (field names as in bububa/opentaobao model/tmc/TmcMessage.go).
"""

from __future__ import annotations

import enum
import hashlib
import struct
from datetime import datetime, timezone
from typing import Any

import msgspec

from adapters.errors import PayloadError


class MessageType(enum.IntEnum):
    CONNECT = 0
    CONNECTACK = 1
    SEND = 2
    SENDACK = 3


class HeaderType(enum.IntEnum):
    END = 0
    CUSTOM = 1
    STATUS_CODE = 2
    STATUS_PHRASE = 3
    FLAG = 4
    TOKEN = 5


class ValueFormat(enum.IntEnum):
    VOID = 0
    COUNTED_STRING = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    DATE = 6
    BYTE_ARRAY = 7


class MessageKind(enum.IntEnum):
    """`__kind` custom header of SEND frames (tmcpy message.py: QueryMessage 1, ConfirmMessage 2)."""

    PULL_REQUEST = 1
    CONFIRM = 2
    DATA = 3  # server push; clients recognise data by its `topic`, not by this number


PROTOCOL_VERSION = 2
SDK_NAME = "top-sdk-java-201403304"  # what the official SDK announces; TMC logs it


class Frame(msgspec.Struct, kw_only=True):
    """One decoded TMC frame."""

    message_type: int
    protocol_version: int = PROTOCOL_VERSION
    status_code: int | None = None
    status_phrase: str | None = None
    flag: int | None = None
    token: str | None = None
    headers: dict[str, Any] = {}


class Date(msgspec.Struct, frozen=True):
    """A `date` value: milliseconds since the epoch (kept distinct from a plain int64)."""

    millis: int

    def to_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.millis / 1000, timezone.utc)


# ------------------------------------------------------------------ encoding


def _counted(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def _value(value: Any) -> bytes:
    if value is None:
        return struct.pack("<B", ValueFormat.VOID)
    if isinstance(value, Date):
        return struct.pack("<Bq", ValueFormat.DATE, value.millis)
    if isinstance(value, bool):
        return struct.pack("<BB", ValueFormat.BYTE, int(value))
    if isinstance(value, MessageKind):
        return struct.pack("<BB", ValueFormat.BYTE, int(value))
    if isinstance(value, int):
        # message ids and user ids are int64 in the Java client: always send them as such
        return struct.pack("<Bq", ValueFormat.INT64, value)
    if isinstance(value, bytes):
        return struct.pack("<BI", ValueFormat.BYTE_ARRAY, len(value)) + value
    return struct.pack("<B", ValueFormat.COUNTED_STRING) + _counted(str(value))


def encode_frame(frame: Frame) -> bytes:
    """Serialise a frame to the bytes sent in one binary WebSocket message."""
    out = bytearray(struct.pack("<BB", frame.protocol_version, frame.message_type))
    if frame.status_code is not None:
        out += struct.pack("<HI", HeaderType.STATUS_CODE, frame.status_code)
    if frame.status_phrase is not None:
        out += struct.pack("<H", HeaderType.STATUS_PHRASE) + _counted(frame.status_phrase)
    if frame.flag is not None:
        out += struct.pack("<HI", HeaderType.FLAG, frame.flag)
    if frame.token is not None:
        out += struct.pack("<H", HeaderType.TOKEN) + _counted(frame.token)
    for key, value in frame.headers.items():
        out += struct.pack("<H", HeaderType.CUSTOM) + _counted(key) + _value(value)
    out += struct.pack("<H", HeaderType.END)
    return bytes(out)


# ------------------------------------------------------------------ decoding


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise PayloadError("tmc.frame", "frame is truncated")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def raw(self, length: int) -> bytes:
        if length < 0 or self.pos + length > len(self.data):
            raise PayloadError("tmc.frame", "frame is truncated")
        chunk = self.data[self.pos : self.pos + length]
        self.pos += length
        return chunk

    def counted(self) -> str:
        try:
            return self.raw(self.take("<I")).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("tmc.frame", "string is not UTF-8") from None

    def value(self) -> Any:
        fmt = self.take("<B")
        if fmt == ValueFormat.VOID:
            return None
        if fmt == ValueFormat.COUNTED_STRING:
            return self.counted()
        if fmt == ValueFormat.BYTE:
            return self.take("<B")
        if fmt == ValueFormat.INT16:
            return self.take("<h")
        if fmt == ValueFormat.INT32:
            return self.take("<i")
        if fmt == ValueFormat.INT64:
            return self.take("<q")
        if fmt == ValueFormat.DATE:
            return Date(self.take("<q"))
        if fmt == ValueFormat.BYTE_ARRAY:
            return self.raw(self.take("<I"))
        raise PayloadError("tmc.frame", "unknown value format")


def decode_frame(data: bytes) -> Frame:
    """Parse one binary TMC frame; PayloadError('tmc.frame') when it is malformed."""
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError("tmc.frame", "TMC frames are binary")
    reader = _Reader(bytes(data))
    frame = Frame(protocol_version=reader.take("<B"), message_type=reader.take("<B"), headers={})
    for _ in range(10_000):  # a bound: a hostile frame cannot spin us forever
        kind = reader.take("<H")
        if kind == HeaderType.END:
            return frame
        if kind == HeaderType.CUSTOM:
            key = reader.counted()
            frame.headers[key] = reader.value()
        elif kind == HeaderType.STATUS_CODE:
            frame.status_code = reader.take("<I")
        elif kind == HeaderType.STATUS_PHRASE:
            frame.status_phrase = reader.counted()
        elif kind == HeaderType.FLAG:
            frame.flag = reader.take("<I")
        elif kind == HeaderType.TOKEN:
            frame.token = reader.counted()
        else:
            raise PayloadError("tmc.frame", "unknown header type")
    raise PayloadError("tmc.frame", "too many headers")


# ------------------------------------------------------------------ the frames a client sends


def connect_sign(app_key: str, app_secret: str, group_name: str, timestamp_ms: int) -> str:
    """UPPER(md5(secret + "app_key"+key + "group_name"+group + "timestamp"+ts + secret))."""
    text = f"{app_secret}app_key{app_key}group_name{group_name}timestamp{timestamp_ms}{app_secret}"
    return hashlib.md5(text.encode("utf-8")).hexdigest().upper()  # noqa: S324 - TMC's own scheme


def connect_frame(app_key: str, app_secret: str, group_name: str, timestamp_ms: int) -> bytes:
    """The handshake the client sends right after the WebSocket opens."""
    return encode_frame(
        Frame(
            message_type=MessageType.CONNECT,
            flag=1,
            headers={
                "timestamp": str(timestamp_ms),
                "app_key": app_key,
                "sdk": SDK_NAME,
                "sign": connect_sign(app_key, app_secret, group_name, timestamp_ms),
                "group_name": group_name,
            },
        )
    )


def confirm_frame(token: str, message_id: int | str) -> bytes:
    """Confirm one message by id (unconfirmed messages are redelivered by Taobao)."""
    ident: int | str = int(message_id) if str(message_id).isascii() and str(message_id).isdigit() else str(message_id)
    return encode_frame(
        Frame(message_type=MessageType.SEND, token=token, headers={"__kind": MessageKind.CONFIRM, "id": ident})
    )


def pull_frame(token: str) -> bytes:
    """Ask the server to push pending messages now (the SDK sends this periodically)."""
    return encode_frame(Frame(message_type=MessageType.SEND, token=token, headers={"__kind": MessageKind.PULL_REQUEST}))
