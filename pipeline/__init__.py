"""The pure core of streamserve: it knows nothing of Kafka, Faust, Prometheus or JAX.

Decoding and validation (``decode``), the batching policy (``batching``), batch
isolation (``isolation``), output encodings (``messages``), the registry format
(``registry``) and configuration (``config``).
"""
