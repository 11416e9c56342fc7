"""The per-host agent: libvirt edge, Kafka edge, and the pipeline between them.

- ``event_loop``: the libvirt event loop thread.
- ``libvirt_names``: libvirt's enum values as stable names.
- ``event_capture``: one callback per libvirt domain event id; callbacks only enqueue.
- ``libvirt_session``: the connection, its close callback, reconnection with backoff.
- ``snapshot``: reading a domain's XML, state and flags after its events.
- ``work_queue``: the thread-safe coalescer the callbacks feed and the pipeline drains.
- ``state_store``: versions and handed-off UUIDs persisted in the state directory.
- ``publisher``: the idempotent Kafka producer and its delivery thread.
- ``topics``: creating and checking the compacted topics.
- ``pipeline``: snapshot, version, publish; one record in flight per domain. Resyncs and heartbeats
  run on its thread too, since they need its version clock and ownership state; the inventory a
  resync collects is :mod:`bridge.core.inventory`.
- ``agent``: wires it all together, starts and stops every thread.
"""
