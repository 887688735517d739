"""The root of every exception streamserve defines, and the two generic ones."""

from __future__ import annotations


class StreamserveError(Exception):
    """The base of every streamserve exception; its message says what went wrong and what
    to do. The ``streamserve`` command prints a StreamserveError that reaches it as one line,
    ``streamserve: error: MESSAGE``, and exits with the error's ``exit_code``.

    The tree (other bases in parentheses; a catcher of the standard type keeps working):

    StreamserveError
      * UsageError (ValueError) ......... command arguments that cannot work as given
      * CheckFailed ..................... a check ran and failed: exit 1 (`models verify`)
      * ConfigError (ValueError) ........ a STREAMSERVE_* setting with a value that cannot work
      * SecurityConfigError (ValueError)  Kafka security settings that do not work together
      * SchemaError (ValueError) ........ a model's input schema that cannot work
      * ControlError (ValueError) ....... a lifecycle change (deploy, canary...) that cannot apply
      * RegistryError ................... the model registry cannot do what was asked
      |   * SignatureError .............. a version's signature or hashes fail: exit 1
      |   * SigningKeyError ............. a key file that cannot be read or written
      * QuotaError (ValueError) ......... a Kafka client quota that cannot be set as asked
      * QuotaSpecError (ValueError) ..... STREAMSERVE_TENANT_QUOTAS that cannot be read
      * RedactionError (ValueError) ..... redaction rules that cannot work
      * ReplayError (ValueError) ........ a recording, replay, diff or gate that cannot work
      * SloError (ValueError) ........... an SLO objective that cannot work
      * StatusError (ValueError) ........ fleet figures that cannot be computed as asked
      * TopologyError (ValueError) ...... a topic replication the cluster cannot give
      * DriftError (ValueError) ......... drift statistics that cannot be built or compared
      * FaultSpecError (ValueError) ..... STREAMSERVE_FAULTS that cannot be read
      * InjectedFault (RuntimeError) .... what a deliberately faulty model raises (chaos tests)
      * _Invalid ........................ decoder-internal: always turned into a dead letter
      * _DuplicateKey ................... decoder-internal: a JSON key given twice
      * MalformedReply (ValueError) ..... a reply record the client cannot read (skipped)
      * StreamClientError ............... a client's request got no prediction
      |   * DeadLetterError ............. the worker answered with a dead letter
      |   * PredictionTimeout (TimeoutError)  no reply within the timeout
      |   * RequestNotSent .............. Kafka did not accept the request
      |   * ClientClosed ................ the client closed before the reply came
      * KafkaAccessError (RuntimeError) . Kafka unreachable, a login or access refused
      * BrokerError (RuntimeError) ...... the local broker cannot be installed, started, stopped
      * WorkerFailed (RuntimeError) ..... a worker process exited or never became ready
      * BenchError (RuntimeError) ....... a bench case could not be measured: exit 1
      * UnknownModelError (LookupError) . no built-in training recipe of that name
      * UnknownDatasetError (LookupError)  no data set of that name
      * ConversionError (ValueError) .... a model file or object `models register` cannot serve
      |   * MissingExtraError (ImportError)  the library its format needs is not installed
      * ExportError (ValueError) ........ bytes that are no function jax.export can read
      * OnnxModelError (ValueError) ..... an ONNX model onnxruntime cannot serve as a classifier
      * UnknownArchitectureError (LookupError)  an architecture this streamserve lacks

    Where each lives: ``pipeline/`` (config, security, schema, routing, registry, signing,
    broker_quotas, tenant_quotas, redaction, replay, slo, status, drift/errors, faults,
    decode, client, replies), ``agents/`` (kafka/connect, dev/broker, dev/fleet, dev/bench) and
    ``models/`` (train, datasets, architectures, exported, onnx_session, formats/errors).
    ``tests/unit/test_errors.py`` checks that every exception class of those packages derives
    from this one and is named above.
    """

    exit_code: int = 2
    """The ``streamserve`` exit status when this error ends a command: 2, a mistake the user
    can fix; 1 (CheckFailed, SignatureError, BenchError), a check that ran and failed."""


class UsageError(StreamserveError, ValueError):
    """Command arguments that cannot work as given (a folder that does not exist, options
    that exclude each other); the message names the option and what to pass instead."""


class CheckFailed(StreamserveError):
    """A check ran and found a problem (``streamserve models verify``); the command has
    printed the details, the message sums them up. Exit status 1, not 2."""

    exit_code = 1
