"""The ``libvirt-kafka-bridge`` command: one module per subcommand."""
