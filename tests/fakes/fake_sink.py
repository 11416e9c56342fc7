"""A record sink (the ``RecordSink`` the pipeline's parts publish to) that the test acknowledges inline.

Unlike :class:`tests.fakes.FakeProducer` behind a real publisher, :meth:`RecordingSink.ack` runs the
sequence's ``on_done`` on the test's own thread, so a test of the resync's rules needs no waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bridge.agent.publisher import Message
from bridge.serde import MessageDecoder, Payload
from tests.fakes.records import CODEC, DOMAINS, HEARTBEATS, HOSTS

_DECODER = MessageDecoder(CODEC, DOMAINS, HOSTS, HEARTBEATS)


def decode(message: Message) -> Payload:
    """The payload of a message the agent produced (a record, or a tombstone)."""
    return _DECODER.decode(message.topic, message.key, message.value, list(message.headers)).payload


@dataclass
class Published:
    messages: Sequence[Message]
    on_done: Callable[[], None]
    on_position: Callable[[int, int], None] | None = None
    acked: bool = False

    @property
    def payloads(self) -> list[Payload]:
        return [decode(m) for m in self.messages]


class RecordingSink:
    """Records every published sequence; :meth:`ack` completes one."""

    def __init__(self) -> None:
        self.published: list[Published] = []

    def publish(self, messages: Sequence[Message], on_done: Callable[[], None],
                on_position: Callable[[int, int], None] | None = None) -> None:
        self.published.append(Published(list(messages), on_done, on_position))

    def kafka_problem(self) -> str | None:
        return None  # the test acknowledges: Kafka is always there

    def ack(self, index: int) -> None:
        sequence = self.published[index]
        assert not sequence.acked, f"sequence {index} was already acknowledged"
        sequence.acked = True
        if sequence.on_position is not None:
            sequence.on_position(0, index)  # one partition; the sequence's index stands for its offset
        sequence.on_done()
