"""The errors of the local Kafka tooling (devkit.kafka), drawn as a tree::

    RuntimeError
     └── KafkaDevError       any local Kafka problem: no mvn or java, a failed fetch, a
          │                  record not acknowledged, a node that is not running ...
          └── KafkaStartError  a node exited or did not answer while starting

Client helpers also let confluent_kafka's KafkaException through for errors the broker
reports, and raise TimeoutError when records or topics do not show up in time.
"""

from __future__ import annotations


class KafkaDevError(RuntimeError):
    """A local Kafka problem, with a message written for a human (the CLI prints it as is)."""


class KafkaStartError(KafkaDevError):
    """A node exited or did not answer while starting; the message carries its log tail."""
