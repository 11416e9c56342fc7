"""Scripted fakes for the agent's and the consumer's I/O edges, for unit tests (no broker, no libvirtd).

- :mod:`tests.fakes.fake_libvirt`: domains, a connection and a session for the snapshot reader and the
  resync listing (listed states, ``Domain not found``, connection loss);
- :mod:`tests.fakes.fake_producer`: a producer that records what was produced and lets the test
  acknowledge or fail each message (for :class:`bridge.agent.publisher.Publisher`);
- :mod:`tests.fakes.fake_consumer`: partitions with watermarks, messages, partition EOF and errors
  (for :class:`bridge.consumer.reflector.Reflector` and the informer).

Each fake serves what the product's Protocol at that edge names, and nothing else.
"""

from tests.fakes.fake_consumer import FakeConsumer, FakeKafkaMessage
from tests.fakes.fake_libvirt import FakeConnection, FakeDomain, FakeSession, libvirt_error
from tests.fakes.fake_producer import FakeProducer, Produced
from tests.fakes.fake_sink import RecordingSink, decode

__all__ = ["FakeConnection", "FakeConsumer", "FakeDomain", "FakeKafkaMessage", "FakeProducer", "FakeSession",
           "Produced", "RecordingSink", "decode", "libvirt_error"]
