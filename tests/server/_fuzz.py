"""Fuzzing a running node: request strategies built from the protos, a raw gRPC
client, and a way to run Hypothesis against a node that serves all its examples.

Strategies. :func:`messages` builds a request of any message type from its
DESCRIPTOR, one strategy per field type (a field added to a proto is fuzzed
without a change here): strings of any code point but surrogates, with the
control characters, the limits (256 bytes of UTF-8) and messages over the
request limit among them; integers over the field type's whole range, with
its edges and SQLite's often; bytes up to and past the limits. Names come
often from a tiny alphabet, so that examples meet each other's elections.
:func:`raw_bodies` gives the bytes of a request body instead: garbage, the
right message cut or spoilt, other messages of the protos (valid protobuf of
the wrong type), and random protobuf wire fields (known field numbers with the
wrong wire type).

Client. :class:`FuzzClient` keeps one connection for all the examples of a
test, and sends ``bytes`` as they are (:class:`RawCodec`): the codec the
stubs use refuses anything but their own request type. It reports what came
back as an :class:`Answer`; anything but a gRPC status (a reset stream, a
closed connection, no answer in time) fails the example.

Hypothesis and Trio. The node must outlive the examples, and ``@given`` wants a
synchronous function: :func:`fuzz` runs Hypothesis in a worker thread, and
each example goes back into the test's Trio run (``trio.from_thread.run``),
where the node, its asyncio loop and the client live. The node keeps what
each example did, so a failure may come from an earlier one: the error notes
the first failing value besides the one Hypothesis shrank it to (a cluster
test does not shrink, since one bad value can take its nodes down for all the
later ones). The examples are derandomized, so a failure comes back on every
run, and a failing example found once stays as a regression (``@example``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpclib.client
import trio
import trio.testing
import trio_asyncio
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from grpclib.const import Cardinality
from grpclib.encoding.proto import ProtoCodec
from grpclib.exceptions import StreamTerminatedError
from h2.exceptions import H2Error, StreamClosedError
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

from trio_election._bridge import MAX_REQUEST_BYTES, GRPCError, Status
from trio_election._generated.v1 import cluster_pb2, election_pb2

#: Every message type of the protos (requests and replies): a request body may
#: be any of them.
ALL_MESSAGES: tuple[Descriptor, ...] = tuple(
    descriptor
    for module in (election_pb2, cluster_pb2)
    for descriptor in module.DESCRIPTOR.message_types_by_name.values()
)

#: No call answers later than this: it would be a hang (seconds, Trio clock).
CALL_TIMEOUT = 10.0

# -- strategies ---------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
#: Integers worth trying wherever they fit: the limits of the API (TTLs), and
#: the extremes of 32 and 64 bits, signed or not (SQLite stores signed 64).
_EDGES = (
    *(0, 1, -1, 99, 100, 101, 4096, 60_000, 60_001, 86_400_000),
    *(2**31 - 1, 2**31, 2**32 - 1, 2**53 + 1, 2**62, 2**63 - 1, 2**63),
)
#: Lengths at and around the limits: names (256 bytes), values (4 KiB), a
#: request (MAX_REQUEST_BYTES; over it is RESOURCE_EXHAUSTED).
_LENGTHS = (255, 256, 257, 4096, 4097, 10_000, MAX_REQUEST_BYTES + 10)
_ODD_STRINGS = (
    "\x00",
    "a\nb",
    "\t",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "\u200b",
    "\U0010ffff",
    "\u00e9" * 128,
    "\u00e9" * 129,
    "a/b",
    "*",
    "..",
)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each as often as its weight says (``st.one_of``
    takes each branch equally often)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


_chars = st.characters(exclude_categories=("Cs",))
strings = weighted(
    (3, st.text(alphabet="ab", min_size=1, max_size=2)),  # names that examples share
    (2, st.text(_chars, max_size=24)),
    (1, st.sampled_from(_ODD_STRINGS)),
    (1, st.builds(lambda c, n: c * n, _chars, st.sampled_from(_LENGTHS))),
)
blobs = st.one_of(
    st.binary(max_size=32),
    st.builds(lambda b, n: bytes([b]) * n, st.integers(0, 255), st.sampled_from(_LENGTHS)),
)


def integers(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Any integer of [lo, hi], with small values and the edges often: the
    limits, and the type's and storage's extremes (SQLite's signed 64 bits)."""
    edges = sorted({lo, hi, *(e for e in _EDGES if lo <= e <= hi)})
    return weighted(
        (2, st.integers(max(lo, 0), min(hi, 100_000))),
        (1, st.sampled_from([e for e in edges if abs(e) <= 100_000])),
        (1, st.sampled_from([e for e in edges if abs(e) > 100_000])),
        (1, st.integers(lo, hi)),
    )


def message_class(descriptor: Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def messages(
    descriptor: Descriptor,
    *,
    depth: int = 2,
    fields: Mapping[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[Message]:
    """Messages of ``descriptor``'s type, with all or any of its fields set.

    Args:
        descriptor: The message type.
        depth: How deep nested messages go (a repeated field of its own type
            in a batch, say).
        fields: A strategy for some fields by name, in place of the generic one.
    """
    cls = message_class(descriptor)
    fields = fields or {}
    optional = {}
    for one in descriptor.fields:
        strategy = fields.get(one.name)
        if strategy is None:
            strategy = _field_values(one, depth)
        if strategy is not None:
            optional[one.name] = strategy
    # Every field set (a request that may well be valid), any few of them, or
    # just one (a batch of heartbeats carries only its list).
    every = st.fixed_dictionaries(optional)
    some = st.one_of(
        st.fixed_dictionaries({}, optional=optional),
        *(st.fixed_dictionaries({name: value}) for name, value in optional.items()),
    )
    values = st.booleans().flatmap(lambda all_of_them: every if all_of_them else some)
    return values.map(lambda values: cls(**values))


def _field_values(one: FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
    if one.type == FieldDescriptor.TYPE_MESSAGE:
        if depth <= 0:
            return None
        value = messages(one.message_type, depth=depth - 1)
    else:
        value = _scalars(one)
    return st.lists(value, max_size=4) if one.is_repeated else value


def _scalars(one: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = one.type
    if kind == FieldDescriptor.TYPE_STRING:
        return strings
    if kind == FieldDescriptor.TYPE_BYTES:
        return blobs
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in one.enum_type.values]
        return st.one_of(st.sampled_from(known), integers(*_INT_RANGES[kind]))
    if kind in _INT_RANGES:
        return integers(*_INT_RANGES[kind])
    raise AssertionError(f"{one.full_name}: no strategy for field type {kind}")


def _varint(n: int) -> bytes:
    n &= 2**64 - 1
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _wire_field(number: int, wire_type: int, value: int, payload: bytes) -> bytes:
    tag = _varint(number << 3 | wire_type)
    if wire_type == 0:
        return tag + _varint(value)
    if wire_type == 1:
        return tag + (value % 2**64).to_bytes(8, "little")
    if wire_type == 2:
        return tag + _varint(len(payload)) + payload
    if wire_type == 5:
        return tag + (value % 2**32).to_bytes(4, "little")
    return tag + payload  # groups (3, 4) and the unused wire types 6 and 7


wire_fields = st.lists(
    st.builds(
        _wire_field,
        st.one_of(st.integers(1, 8), st.integers(0, 2**29 - 1)),
        st.integers(0, 7),
        st.integers(-(2**63), 2**64 - 1),
        st.binary(max_size=16),
    ),
    min_size=1,
    max_size=5,
).map(b"".join)


def _spoil(data: bytes, how: str, at: int, junk: bytes) -> bytes:
    at = at % (len(data) + 1)
    if how == "cut":
        return data[:at]
    if how == "flip" and data:
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    if how == "insert":
        return data[:at] + junk + data[at:]
    return data + junk


def spoilt(raw: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes of ``raw`` cut short, with a byte flipped, or with junk put in."""
    return st.builds(
        _spoil,
        raw,
        st.sampled_from(["cut", "flip", "insert", "append"]),
        st.integers(0, 2**16),
        st.binary(min_size=1, max_size=8),
    )


def raw_bodies(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Request bodies for a call that takes ``descriptor``: anything at all."""
    right = messages(descriptor).map(lambda m: m.SerializeToString())
    wrong = st.sampled_from(ALL_MESSAGES).flatmap(lambda d: messages(d, depth=1))
    return st.one_of(
        st.binary(max_size=64),
        spoilt(right),
        wrong.map(lambda m: m.SerializeToString()),
        wire_fields,
        spoilt(wire_fields),
    )


# -- the client ---------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One method of a service, as the fuzzer calls it."""

    path: str
    request: Descriptor
    reply: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def cardinality(self) -> Cardinality:
        return next(
            c
            for c in Cardinality
            if (c.client_streaming, c.server_streaming)
            == (self.client_streaming, self.server_streaming)
        )


def rpcs(service: ServiceDescriptor) -> dict[str, Rpc]:
    """Every method of ``service`` by name (a method added to it is fuzzed too)."""
    return {
        method.name: Rpc(
            f"/{service.full_name}/{method.name}",
            method.input_type,
            message_class(method.output_type),
            method.client_streaming,
            method.server_streaming,
        )
        for method in service.methods
    }


def calls(rpc: Rpc, requests: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """What one call of ``rpc`` sends: one request, or a few on a client stream."""
    if rpc.client_streaming:
        return st.lists(requests, max_size=3)
    return requests.map(lambda request: [request])


class RawCodec(ProtoCodec):
    """Protobuf, but a request given as ``bytes`` goes out as it is."""

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes | bytearray):
            return bytes(message)
        return message.SerializeToString()


@dataclass
class Answer:
    """What a call got: its replies and its status (OK, or the error's)."""

    replies: list[Message] = field(default_factory=list)
    status: Status = Status.OK
    message: str = ""
    #: The call was still open when the node had done all it could with it (a
    #: Campaign that waits, a Watch that waits for a change): it was cancelled.
    pending: bool = False
    #: How the call failed without a status (it must not).
    broken: str | None = None


class FuzzClient:
    """One grpclib connection to a node, for all the examples of a test.

    Args:
        host, port: The node's listener.
        metadata: Sent with every call (the cluster key, say).
    """

    def __init__(self, host: str, port: int, metadata: Mapping[str, str] | None = None) -> None:
        self.channel = grpclib.client.Channel(host, port, codec=RawCodec())
        self.metadata = dict(metadata or {})
        self._protocol: Any = None

    async def call(
        self,
        rpc: Rpc,
        requests: Sequence[Message | bytes],
        *,
        open_ended: bool = False,
        patience: float | None = None,
    ) -> Answer:
        """Send ``requests`` (one for a unary request) and read the answer.

        Args:
            open_ended: The call may rightly wait for ever (Campaign, Watch): take
                its first reply, or none if the node has done all it could with
                the call (``trio.testing.wait_all_tasks_blocked``), then cancel it.
            patience: For a node in another process, where this process cannot
                see that it is done: an open-ended call with no reply after this
                many seconds is taken as waiting. It bounds a wait that may
                rightly last for ever; no check depends on it.

        Raises:
            AssertionError: the call ended without a gRPC status (a reset, a lost
                connection), or took longer than CALL_TIMEOUT.
        """
        answer = Answer()
        stream = self.channel.request(
            rpc.path, rpc.cardinality, bytes, rpc.reply, metadata=self.metadata
        )
        exchange = trio_asyncio.aio_as_trio(_exchange)
        try:
            with trio.fail_after(CALL_TIMEOUT):
                if not open_ended:
                    await exchange(stream, requests, answer, first_only=False)
                else:
                    async with trio.open_nursery() as nursery:

                        async def give_up() -> None:
                            if patience is None:
                                await trio.testing.wait_all_tasks_blocked()
                            else:
                                await trio.sleep(patience)
                            answer.pending = True
                            nursery.cancel_scope.cancel()

                        nursery.start_soon(give_up)
                        await exchange(stream, requests, answer, first_only=rpc.server_streaming)
                        nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            raise AssertionError(f"{rpc.name}: no answer within {CALL_TIMEOUT:g} s") from None
        assert answer.broken is None, f"{rpc.name}: the call broke without a status: {answer}"
        self._check_connection()
        return answer

    def _check_connection(self) -> None:
        """The connection of the first call is the one still in use: none broke."""
        protocol = self.channel._protocol
        assert protocol is not None and not protocol.handler.connection_lost, "connection lost"
        if self._protocol is None:
            self._protocol = protocol
        assert protocol is self._protocol, "the connection was lost and made again"

    def close(self) -> None:
        self.channel.close()


async def _exchange(
    stream: Any, requests: Sequence[Message | bytes], answer: Answer, *, first_only: bool
) -> None:
    """The asyncio side of :meth:`FuzzClient.call`."""
    try:
        async with stream:
            await stream.send_request()
            for i, request in enumerate(requests):
                await stream.send_message(request, end=i == len(requests) - 1)
            if not requests:
                await stream.end()
            while (reply := await stream.recv_message()) is not None:
                answer.replies.append(reply)
                if first_only:
                    with contextlib.suppress(StreamClosedError):  # ended already
                        await stream.cancel()
                        return
            await stream.recv_trailing_metadata()
    except GRPCError as exc:
        answer.status, answer.message = exc.status, exc.message or ""
    except (StreamTerminatedError, H2Error, OSError) as exc:
        # The node may end a call with its status (a refusal on the headers,
        # say) and reset the stream while the request is still going out:
        # that status is the answer. Without one, the call broke.
        try:
            if getattr(stream, "_stream", None) is not None:
                stream._maybe_raise()
        except GRPCError as status:
            answer.status, answer.message = status.status, status.message or ""
        else:
            answer.broken = repr(exc)


def check_status(rpc: Rpc, answer: Answer, allowed: Collection[Status]) -> None:
    """The call was answered OK, or with one of the ``allowed`` statuses."""
    if answer.status is Status.OK:
        assert answer.pending or answer.replies or rpc.server_streaming, (rpc.name, answer)
        return
    assert answer.status in allowed, f"{rpc.name} answered {answer.status.name}: {answer.message!r}"


# -- Hypothesis against a running node -------------------------------------------------


def fuzz_settings(max_examples: int, *, shrink: bool = True) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[phase for phase in Phase if shrink or phase is not Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


async def fuzz(
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], Awaitable[None]],
    *,
    max_examples: int,
    regressions: Iterable[Any] = (),
    shrink: bool = True,
) -> None:
    """Run ``await check(value)`` in this Trio run for values drawn from ``strategy``.

    Args:
        strategy: What to draw.
        check: Sends one value to the node and fails (AssertionError) on a bad answer.
        max_examples: How many values Hypothesis tries (besides ``regressions``).
        regressions: Values tried first, every time (failures found before).
        shrink: Whether Hypothesis shrinks a failure; not worth it when one
            bad value can take the node down for all later ones (a cluster).
    """
    failed: list[Any] = []

    @fuzz_settings(max_examples, shrink=shrink)
    @given(strategy)
    def one(value: Any) -> None:
        try:
            trio.from_thread.run(check, value)
        except Exception:
            if not failed:
                failed.append(value)
            raise

    for value in regressions:
        one = example(value)(one)
    try:
        await trio.to_thread.run_sync(one)
    except BaseException as exc:
        if failed:
            exc.add_note(f"The first failing example: {describe(failed[0])}")
        raise


def describe(value: Any, limit: int = 2000) -> str:
    """``value`` for a person: messages by type with their fields on one line
    (a protobuf message's own repr is its fields only, and empty if none)."""
    if isinstance(value, list | tuple):
        text = "[" + ", ".join(describe(item, limit) for item in value) + "]"
    elif isinstance(value, Message):
        fields = text_format.MessageToString(value, as_one_line=True)
        text = f"{type(value).__name__}({fields})"
    else:
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def tracebacks(records: Iterable[Any]) -> list[str]:
    """The log records that carry a traceback, or are errors."""
    return [
        f"{record.name}: {record.getMessage()}"
        for record in records
        if record.exc_info or record.levelno >= 40
    ]
