"""The per-host agent: libvirt edge, Kafka edge, and the pipeline between them.

Modules, one concept each:

- ``event_loop``: the libvirt event loop thread.
- ``libvirt_names``: libvirt's enum values as stable names.
- ``event_capture``: one callback per libvirt domain event id; callbacks only enqueue.
- ``libvirt_session``: the connection, its close callback, reconnection with backoff.
- ``snapshot``: reading a domain's XML, state and flags after its events (and a listed domain's job).
- ``listing``: a resync's listing of every domain, in a few bulk libvirt calls.
- ``work_queue``: the thread-safe coalescer the callbacks feed and the pipeline drains.
- ``state_store``: versions and handed-off UUIDs persisted in the state directory.
- ``publisher``: the idempotent Kafka producer and its delivery thread.
- ``topics``: creating and checking the compacted topics.
- ``pipeline``: the coordinator of the ``pipeline`` thread (loop, timers, drain), owning the version
  clock and the ownership state; ``pipeline_config`` holds what its parts share;
- ``streaming``: batches of events become versioned records (snapshot after the events, version,
  produce); ``resync``: the listing, its inventory (:mod:`bridge.core.inventory`) and the HostRecord;
- ``reassert``: after a hand-off, asking the new owner on the control topic to have the last word;
- ``signal_listener``: the control topic's reader (resync signals, re-assertion requests);
- ``metrics`` and ``http_server``: ``/metrics``, ``/healthz`` and ``/readyz``.
- ``agent``: wires it all together, starts and stops every thread.

Thread map (each thread is started and stopped by the one object named):

============================  =====================  ==============================================
thread                        owner                  what it may touch
============================  =====================  ==============================================
main (the CLI)                :class:`Agent`         start/stop; reads ``Agent.status()``; writes
                                                     ``status.json``
``libvirt-event-loop``        ``LibvirtEventLoop``   libvirt's event loop; the capture callbacks run
                                                     here and only enqueue into the ``WorkQueue``
``libvirt-reconnect``         ``LibvirtSession``     the connection (under the session's lock);
                                                     asks the pipeline for a resync (an Event)
``pipeline``                  ``Pipeline``           the clock, the ownership state, the state store,
                                                     the resync tracker: nothing else touches them
``snapshot-reader-N``         ``Streamer``           libvirt reads of a group of domains; return values
``kafka-delivery``            ``Publisher``          the producer; runs each record's ``on_done``:
                                                     ``WorkQueue.done`` (locked), an Event, metrics,
                                                     and ``KeyPositions.note`` (locked)
``control-signals``           ``SignalListener``     the control topic's consumer; hands signals to
                                                     the pipeline (an Event, ``Reasserter.requested``
                                                     under its lock)
``metrics-http``              ``MetricsServer``      reads ``Agent.status()``/``health()`` per request
============================  =====================  ==============================================

Shared state and its guard: the ``WorkQueue``'s pending/in-flight maps and acks (its lock); the
publisher's in-flight sequences and retry heap (its lock); the session's connection (its lock); the
snapshot reader's handles and listing (its lock); the re-assertion requests and the records'
positions (their locks, :mod:`bridge.agent.reassert`); the pipeline's counters are written only on the
``pipeline`` thread and read as a snapshot of ints.
"""
