"""The Kafka boundary: the only package that imports ``confluent_kafka``.

- :mod:`.api`: the project's own types (``Record``, ``TopicPartition``) and the
  ``Consumer`` Protocol the loop is written against; imports no Kafka client;
- :mod:`.consumer`: ``KafkaSource``, the consumer group member on a real cluster,
  with its broker-health reading and lag probe;
- :mod:`.memory`: ``MemorySource``, an in-memory ``Consumer`` for tests and trials;
- :mod:`.producer`: the dead-letter producer, and producing sample clickstream;
- :mod:`.settings`: the clients' librdkafka settings and their offline check.

Nothing is imported here, so that loading :mod:`.api` loads no Kafka client.
"""
