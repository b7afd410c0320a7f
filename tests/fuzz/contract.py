"""Contract fuzzing: request payloads built from each request message's descriptor, and the rule
every answer must satisfy.

``payloads(method, base, known)`` draws one of
- (half the examples) a *perturbed valid request*: ``base`` (a request the suite answers as
  expected) with ONE field changed, at any depth (an element of a repeated sub-message, a
  policy's parameter, a timestamp), so that the other fields stay valid and the call reaches the
  code behind the checks of the fields it did not change;
- (a fifth) a *random message* built from the descriptor (any subset of fields set);
- (the rest) *raw bytes*: random bytes, a valid request truncated or with one byte changed, or a
  string field whose bytes are a lone UTF-16 surrogate encoded as UTF-8 (``ed a0 80``):
  protobuf's Python runtime refuses lone surrogates in ``str`` fields (UnicodeEncodeError when
  set), so that is the only way they can reach a server (no request here has a ``bytes`` field).

Field values: strings with NUL and other control characters, bidi and zero-width characters, a
non-character, very long strings (300, 10,000 and 70,000 characters), the suite's known ids;
integers at and beyond every bound (int32/int64/uint64 limits, 0, -1, the services' batch limits
± 1); doubles and floats NaN, ±inf, -0.0, ±1e308, the smallest subnormal; unknown enum numbers
(proto3 enums are open: -1, 99, the int32 limits); google.protobuf.Timestamp seconds and nanos at
and beyond the valid range (0001-01-01 .. 9999-12-31, nanos 0 .. 999,999,999) and at the int64 /
int32 limits; repeated fields of 0-4 elements or one small element repeated 1,001, 1,025 or
10,001 times (past every batch limit); maps of 0-3 entries.

``ACCEPTABLE`` is what an answer may be; ``check_answer`` asserts it. ``KNOWN_DEFECTS`` keeps
inputs out of the generated domain that still fail against another service's code, each with
its description, so that the test is green and the list stays visible (empty when none is left).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor, message, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from services.common.errors import DOMAIN, error_info

T = TypeVar("T")

# Examples per RPC (and per store). 50 keeps the whole contract fuzz within its share of
# ``make test``; LONGTAIL_FUZZ_EXAMPLES=2000 makes a long run.
EXAMPLES = int(os.environ.get("LONGTAIL_FUZZ_EXAMPLES", "50"))
# Every call's deadline: generous, so that DEADLINE_EXCEEDED can only mean a hang or a hop that
# ran out of its own budget, never a slow machine.
CALL_TIMEOUT = 60.0


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    """Deterministic (derandomize, no example database), no per-example deadline."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


# ------------------------------------------------------------------------------- the answers

# What an answer may be, and why:
# - OK: the input was acceptable (odd but valid values are valid).
# - INVALID_ARGUMENT: the input was refused (with an ErrorInfo reason, asserted below).
# - NOT_FOUND: a well-formed id that names nothing (a user, a request id).
# - ALREADY_EXISTS: a well-formed write that conflicts with a stored one (an impression slot of
#   a request id already claimed with other content).
# - FAILED_PRECONDITION: the state does not allow it yet (TrainModel without interactions).
# - UNAVAILABLE: a dependency is absent or down (embeddings without Triton; what relays it).
# - DEADLINE_EXCEEDED: a hop ran out of its budget (never the client's generous deadline here).
# - RESOURCE_EXHAUSTED: a message past gRPC's size limits (gRPC's own answer).
# Never INTERNAL or UNKNOWN: those mean a defect (an unmapped exception, a crash in a handler).
ACCEPTABLE = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# Codes only our own code produces: they must carry a google.rpc ErrorInfo of our domain.
WITH_REASON = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)


@dataclasses.dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    reason: str | None
    body: bytes = b""


async def call(channel: grpc.aio.Channel, method: str, payload: bytes) -> Answer:
    """``payload`` as the request of ``method``, byte for byte (no serializer on either side)."""
    stub: Any = channel.unary_unary(method)
    try:
        body: bytes = await stub(payload, timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        reason = info.reason if info is not None and info.domain == DOMAIN else None
        return Answer(error.code(), error.details() or "", reason)
    return Answer(grpc.StatusCode.OK, "", None, body)


def check_answer(method: str, payload: bytes, answer: Answer) -> None:
    shown = payload if len(payload) <= 300 else payload[:300] + b"..."
    assert answer.code in ACCEPTABLE, (
        f"{method} answered {answer.code.name} ({answer.details!r}) to {shown!r}"
    )
    if answer.code in WITH_REASON:
        assert answer.reason, (
            f"{method} answered {answer.code.name} without an ErrorInfo reason of {DOMAIN} "
            f"({answer.details!r}) to {shown!r}"
        )


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    stub: Any = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply = await stub(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
    return int(reply.status)


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 300.0) -> None:
    """Until health says SERVING: the Watch stream reports every change (no polling)."""
    watch: Any = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    stream = watch(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
    try:
        async for reply in stream:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
    finally:
        stream.cancel()
    raise AssertionError("the health stream ended before SERVING")


class LoopRunner:
    """One event loop for a module's servers, driven from synchronous (hypothesis) tests: the
    servers make progress while a call runs through ``run``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


# ------------------------------------------------------------------------------ known defects


@dataclasses.dataclass(frozen=True)
class KnownDefect:
    """An input that still gets INTERNAL/UNKNOWN from code outside the runtime (reported, kept
    out of the generated domain until it is fixed)."""

    method: str
    description: str
    matches: Callable[[message.Message], bool]


KNOWN_DEFECTS: tuple[KnownDefect, ...] = ()


def known_defect(method: str, request: message.Message) -> KnownDefect | None:
    for defect in KNOWN_DEFECTS:
        if defect.method == method and defect.matches(request):
            return defect
    return None


def _is_known_defect(method: str, message_class: type[message.Message], payload: Any) -> bool:
    """Whether the payload (raw bytes included, when they decode) is a known defect's input."""
    request = payload.request
    if request is None:
        try:
            request = message_class.FromString(payload.data)
        except Exception:
            return False
    return known_defect(method, request) is not None


# ------------------------------------------------------------------------------- the values

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)
# The services' limits (batches, k, ids, texts) and one past each.
LIMITS = (100, 101, 255, 256, 1000, 1001, 1024, 1025, 8192, 8193, 10_000, 10_001)

SPECIAL_STRINGS = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x00" * 8,
    "\x01\x02\x1b[31m\x7f",
    "\t\n\r\x0b\x0c",
    "\u202e\u200b\u2028\ufeff",
    "\ufffe\uffff",
    "\U0010ffff",
    "\U0001f4a5" * 3,
    "e\u0301" * 4,
    "%s%n%x{0}",
    "' OR 1=1 --",
    "../../etc/passwd",
    "x" * 300,
    "\u00e9" * 10_000,
    "x" * 70_000,
)
SPECIAL_DOUBLES = (
    math.nan,
    math.inf,
    -math.inf,
    -0.0,
    0.0,
    1.0,
    -1.0,
    0.5,
    1.5,
    1e308,
    -1e308,
    5e-324,
    float(2**63),
)
TIMESTAMP_SECONDS = (
    0,
    -1,
    1_700_000_000,
    -62_135_596_800,  # 0001-01-01T00:00:00Z, the earliest valid
    -62_135_596_801,
    253_402_300_799,  # 9999-12-31T23:59:59Z, the latest valid
    253_402_300_800,
    *INT64,
)
TIMESTAMP_NANOS = (0, 1, 999_999_999, 1_000_000_000, -1, *INT32)
UNKNOWN_ENUM_NUMBERS = (-1, 99, *INT32)

_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: INT32,
    FieldDescriptor.TYPE_SINT32: INT32,
    FieldDescriptor.TYPE_SFIXED32: INT32,
    FieldDescriptor.TYPE_INT64: INT64,
    FieldDescriptor.TYPE_SINT64: INT64,
    FieldDescriptor.TYPE_SFIXED64: INT64,
    FieldDescriptor.TYPE_UINT32: UINT32,
    FieldDescriptor.TYPE_FIXED32: UINT32,
    FieldDescriptor.TYPE_UINT64: UINT64,
    FieldDescriptor.TYPE_FIXED64: UINT64,
}
LONG_REPEATS = (1001, 1025, 10_001)
MAX_DEPTH = 3


def strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SPECIAL_STRINGS),
        st.sampled_from(tuple(known) or ("",)),
        st.text(st.characters(codec="utf-8"), max_size=24),
    )


def _short_strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(tuple(known) or ("",)), st.text(max_size=8))


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    bounds = {
        low,
        high,
        0,
        1,
        *(n for n in (-1, *LIMITS, *(-n for n in LIMITS)) if low <= n <= high),
    }
    return st.one_of(st.sampled_from(sorted(bounds)), st.integers(low, high))


def _scalar(field: Any, known: Sequence[str], short: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return _short_strings(known) if short else strings(known)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8 if short else 64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        # A float field keeps what float32 can hold: 1e308 becomes inf, 5e-324 becomes 0.
        return st.one_of(st.sampled_from(SPECIAL_DOUBLES), st.floats())
    if kind == FieldDescriptor.TYPE_ENUM:
        numbers = [value.number for value in field.enum_type.values]
        return st.sampled_from(sorted({*numbers, *UNKNOWN_ENUM_NUMBERS}))
    low, high = _INTEGER_RANGES[kind]
    return _integers(low, high)


def _timestamps(message_class: type[message.Message]) -> st.SearchStrategy[message.Message]:
    seconds = st.one_of(st.sampled_from(TIMESTAMP_SECONDS), st.integers(*INT64))
    nanos = st.one_of(st.sampled_from(TIMESTAMP_NANOS), st.integers(*INT32))

    def build(s: int, n: int) -> message.Message:
        # Through the wire form: the class is made from the descriptor, so its fields are untyped.
        return message_class.FromString(
            timestamp_pb2.Timestamp(seconds=s, nanos=n).SerializeToString()
        )

    return st.builds(build, seconds, nanos)


def _message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(desc)


def _single(field: Any, known: Sequence[str], depth: int, short: bool) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(_message_class(field.message_type), known, depth + 1, short)
    return _scalar(field, known, short)


def _value(field: Any, known: Sequence[str], depth: int) -> st.SearchStrategy[Any]:
    """What a field of a message is set to (a list for repeated, a dict for maps)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        return st.dictionaries(
            _single(key_field, known, depth, short=False),
            _single(value_field, known, depth, short=False),
            max_size=3,
        )
    if field.is_repeated:
        element = _single(field, known, depth, short=False)
        small = _single(field, known, depth, short=True)
        return st.one_of(
            st.lists(element, max_size=4),
            st.builds(lambda e, n: [e] * n, small, st.sampled_from(LONG_REPEATS)),
        )
    return _single(field, known, depth, short=False)


def _assign(target: message.Message, field: Any, value: Any) -> None:
    slot = getattr(target, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        is_message = field.message_type.fields_by_name["value"].message_type is not None
        for key, item in value.items():
            if is_message:
                slot[key].CopyFrom(item)
            else:
                slot[key] = item
    elif field.is_repeated:
        slot.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        slot.CopyFrom(value)
    else:
        setattr(target, field.name, value)


def messages(
    message_class: type[message.Message],
    known: Sequence[str] = (),
    depth: int = 0,
    short: bool = False,
) -> st.SearchStrategy[message.Message]:
    """Messages of ``message_class`` with any subset of fields set to fuzzed values."""
    desc = message_class.DESCRIPTOR
    if desc.full_name == "google.protobuf.Timestamp":
        return _timestamps(message_class)
    if depth >= MAX_DEPTH or short:
        return st.just(message_class())
    fields = {field.name: field for field in desc.fields}
    optional = {name: _value(field, known, depth) for name, field in fields.items()}

    def build(values: Mapping[str, Any]) -> message.Message:
        built = message_class()
        for name, value in values.items():
            _assign(built, fields[name], value)
        return built

    return st.fixed_dictionaries({}, optional=optional).map(build)


def _is_map(field: Any) -> bool:
    return field.message_type is not None and bool(field.message_type.GetOptions().map_entry)


def _is_plain_message(field: Any) -> bool:
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and not _is_map(field)
        and field.message_type.full_name != "google.protobuf.Timestamp"
    )


def perturbed(
    base: message.Message, known: Sequence[str] = (), depth: int = 0
) -> st.SearchStrategy[message.Message]:
    """``base`` with ONE field changed, at any depth: the other fields stay valid, so the call
    gets past the checks of the fields it did not change. A sub-message (an element of a
    repeated one included) is either replaced or perturbed in turn; a repeated or map field is
    replaced by a fuzzed one, or gets a fuzzed element added."""
    fields = list(base.DESCRIPTOR.fields)
    if not fields:
        return st.just(base)

    @st.composite
    def change(draw: st.DrawFn) -> message.Message:
        field: Any = draw(st.sampled_from(fields))
        changed = type(base)()
        changed.CopyFrom(base)
        slot = getattr(changed, field.name)
        nested = depth < MAX_DEPTH and _is_plain_message(field)
        if nested and field.is_repeated and len(slot) and draw(st.booleans()):
            index = draw(st.integers(0, len(slot) - 1))
            slot[index].CopyFrom(draw(perturbed(slot[index], known, depth + 1)))
            return changed
        if nested and not field.is_repeated and draw(st.booleans()):
            slot.CopyFrom(draw(perturbed(slot, known, depth + 1)))
            return changed
        value = draw(_value(field, known, depth))
        if field.is_repeated and draw(st.booleans()):
            changed.ClearField(field.name)  # replaced; else the fuzzed elements are added
        elif not field.is_repeated:
            changed.ClearField(field.name)
        _assign(changed, field, value)
        return changed

    return change()


def _surrogate_in_string(message_class: type[message.Message]) -> list[bytes]:
    """Wire bytes that put a UTF-8-encoded lone surrogate into each top-level string field."""
    lone = "\ud800".encode("utf-8", "surrogatepass")  # b"\xed\xa0\x80"
    found = []
    for field in message_class.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING and field.number < 16:
            found.append(bytes([field.number << 3 | 2, len(lone)]) + lone)
    return found


def raw_payloads(base: message.Message) -> st.SearchStrategy[bytes]:
    valid = base.SerializeToString()
    lone_surrogates = _surrogate_in_string(type(base))

    def truncated(cut: int) -> bytes:
        return valid[: cut % (len(valid) + 1)]

    def changed(at: int, byte: int) -> bytes:
        if not valid:
            return bytes([byte])
        position = at % len(valid)
        return valid[:position] + bytes([byte]) + valid[position + 1 :]

    options: list[st.SearchStrategy[bytes]] = [
        st.binary(max_size=64),
        st.sampled_from((b"\xff\xff\xff\xff", b"\x08", b"\x0a\xff\xff\xff\xff\x0f")),
        st.integers(0, 2**16).map(truncated),
        st.builds(changed, st.integers(0, 2**16), st.integers(0, 255)),
    ]
    if lone_surrogates:
        options.append(st.sampled_from(lone_surrogates))
    return st.one_of(options)


@dataclasses.dataclass(frozen=True)
class Payload:
    """A request as sent: its bytes and, when it was built as a message, that message."""

    data: bytes
    request: message.Message | None

    def __repr__(self) -> str:
        if self.request is None:
            return f"Payload(raw={self.data[:300]!r}{'...' if len(self.data) > 300 else ''})"
        shown = str(self.request)
        if len(shown) > 2000:
            shown = shown[:2000] + "..."
        return f"Payload({type(self.request).__name__}: {shown!r})"


def payloads(
    method: str, base: message.Message, known: Sequence[str]
) -> st.SearchStrategy[Payload]:
    """What the fuzz sends to ``method``: half perturbed valid requests, a fifth random messages,
    the rest raw bytes; inputs listed in ``KNOWN_DEFECTS`` are left out."""

    def as_payload(request: message.Message) -> Payload:
        return Payload(request.SerializeToString(), request)

    one_change = perturbed(base, known).map(as_payload)
    fresh = messages(type(base), known).map(as_payload)
    raw = raw_payloads(base).map(lambda data: Payload(data, None))
    mix = (one_change,) * 5 + (fresh,) * 2 + (raw,) * 3
    return (
        st.sampled_from(mix)
        .flatmap(lambda chosen: chosen)
        .filter(lambda payload: not _is_known_defect(method, type(base), payload))
    )
