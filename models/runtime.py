"""A registered model version made ready to serve: every padding bucket compiled up front."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from models import onnx_session
from models.architectures import prepared
from pipeline.batching import PaddingBuffers, chunks
from pipeline.registry import Manifest, Registry


def keep_compiled(folder: str) -> None:
    """Keep compiled executables in ``folder`` across processes (JAX's persistent
    compilation cache), so a restarted worker loads them instead of compiling; "off"
    leaves compiling as it is."""
    if folder == "off":
        return
    jax.config.update("jax_compilation_cache_dir", str(Path(folder).resolve()))
    # Every bucket, however quick to compile: a worker compiles dozens of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class ServingModel:
    """One model version with an ahead-of-time compiled executable per padding bucket (an
    ONNX version: an onnxruntime runner per bucket, ``models.onnx_session``).

    All compilation happens in the constructor (``compiles`` counts it), so ``predict``
    never traces or compiles; ``warm`` runs each executable once, so it never runs cold. ``predict`` reuses preallocated padding buffers: call it
    from one thread at a time (the worker's single inference executor thread).
    """

    def __init__(self, manifest: Manifest, params: Mapping[str, np.ndarray], buckets: Sequence[int]) -> None:
        self.manifest = manifest
        self.n_features = len(manifest.inputs)  # numbers per row (a tensor's, flat)
        self.shape = manifest.inputs.shape  # what the model takes per row
        self.width = manifest.outputs.width  # answer columns: classes, or targets
        self._buffers = PaddingBuffers(buckets, self.n_features)
        self.buckets = self._buffers.buckets
        if manifest.architecture == onnx_session.ARCHITECTURE:  # onnxruntime, not compiled
            self._params = None
            self._executables = onnx_session.runners(params, self.buckets, self.shape,
                                                     self.width)
            self.compiles = 0
            return
        apply, arrays = prepared(manifest.architecture, params)
        self._params = jax.device_put(arrays)
        jitted = jax.jit(apply)
        self._executables = {b: self._lower(jitted, b).compile() for b in self.buckets}
        self.compiles = len(self._executables)

    def warm(self) -> None:
        """One run per bucket. The first call of an executable (in each thread) pays for
        allocations and caches: call this in the thread that will serve, before it does."""
        for bucket, executable in self._executables.items():
            np.asarray(executable(self._params, np.zeros((bucket, *self.shape), np.float32)))

    @classmethod
    def load(cls, registry: Registry, model: str, version: str, buckets: Sequence[int]) -> ServingModel:
        """Load a registered version (parameters checked against their sha256) and compile it."""
        return cls(registry.manifest(model, version), registry.load_params(model, version), buckets)

    @property
    def model(self) -> str:
        return self.manifest.model

    @property
    def version(self) -> str:
        return self.manifest.version

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_features) feature rows -> (n, width) float32 answers: class probabilities,
        or a regressor's values."""
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"{self.model} version {self.version} takes rows of {self.n_features} "
                             f"features, shape (n, {self.n_features}); got {x.shape}")
        result = np.empty((x.shape[0], self.width), np.float32)
        for start, stop in chunks(x.shape[0], self.buckets[-1]):
            padded = self._buffers.fill(x[start:stop])  # flat rows; the model's shape is a view
            out = self._executables[padded.shape[0]](self._params,
                                                     padded.reshape(padded.shape[0], *self.shape))
            # Copying to the host waits for the result, so the buffer is free to refill;
            # slicing on the host, not on the device, avoids compiling a slice op.
            result[start:stop] = np.asarray(out)[: stop - start]
        return result

    def _lower(self, jitted: jax.stages.Wrapped, bucket: int) -> jax.stages.Lowered:
        name = f"{self.model} version {self.version}"
        try:
            x = jax.ShapeDtypeStruct((bucket, *self.shape), jnp.float32)
            lowered = jitted.lower(self._params, x)
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{name}: its parameters do not fit architecture "
                             f"{self.manifest.architecture!r} with {self.n_features} input features "
                             f"({e}); the registry entry is inconsistent, register the model again") from e
        out = lowered.out_info
        if (out.shape, out.dtype) != ((bucket, self.width), jnp.float32):
            raise ValueError(f"{name}: the model outputs {out.dtype}{list(out.shape)} "
                             f"for a batch of {bucket}, but its manifest lists {self.width} "
                             f"{'targets' if self.manifest.outputs.is_regressor else 'labels'}; "
                             f"the registry entry is inconsistent, register the model again")
        return lowered


def evaluator(architecture: str, params: Mapping[str, np.ndarray],
              shape: Sequence[int]) -> Callable[[np.ndarray], np.ndarray]:
    """Flat rows -> answers of any architecture taking ``shape`` per row, without buckets
    (registration checks a conversion with it): JAX ones jitted, an ONNX model through
    its session."""
    if architecture == onnx_session.ARCHITECTURE:
        run = onnx_session.opened(bytes(params[onnx_session.MODEL]))[0]
    else:
        apply, arrays = prepared(architecture, params)
        jitted = jax.jit(apply)
        run = lambda x: np.asarray(jitted(arrays, x))  # noqa: E731
    return lambda x: run(x.reshape(len(x), *shape))
