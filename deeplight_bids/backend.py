"""The Keras backend (TensorFlow, JAX or PyTorch) and the few operations that differ between them.

Models, rules and the analyzer are written with ``keras.ops`` and run unchanged on every
backend; what cannot be (compiling a function, a vector-Jacobian product, asking for a
GPU, thread pools) lives here and nowhere else.

Keras reads ``KERAS_BACKEND`` once, when it is first imported: :func:`select_backend`
must run before anything imports ``keras`` (the CLI calls it first thing).  This
module imports neither Keras nor a backend at module level.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from deeplight_bids.exceptions import UsageError

#: Keras backends the models and LRP run on.
BACKENDS = ("tensorflow", "jax", "torch")

#: The Keras default, and this project's.
DEFAULT_BACKEND = "tensorflow"


def select_backend(name: str | None = None) -> str:
    """Set ``KERAS_BACKEND`` to ``name`` before Keras is imported; return the backend in force.

    Parameters
    ----------
    name : str or None
        One of :data:`BACKENDS`; ``None`` keeps ``$KERAS_BACKEND`` (default tensorflow).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Unknown name, or Keras already imported with another backend in this process.
    """
    if name is None:
        name = os.environ.get("KERAS_BACKEND", DEFAULT_BACKEND)
    if name not in BACKENDS:
        raise ValueError(f"unknown Keras backend {name!r}; must be one of {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise ValueError(
                f"Keras was already imported with backend {current!r}; start a new process to use {name!r}"
            )
        return current
    os.environ["KERAS_BACKEND"] = name
    return name


def name() -> str:
    """The Keras backend in force (imports Keras)."""
    import keras

    return keras.backend.backend()


def check_installed(backend: str) -> None:
    """Raise ``ImportError`` with the install hint when ``backend``'s package is missing."""
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    try:
        __import__(module)
    except ImportError as err:
        extra = "" if backend == "tensorflow" else f"[{backend}]"
        raise ImportError(
            f"the Keras backend {backend!r} needs the package {module!r}, which is not installed; "
            f"install it with: pip install 'deeplight-bids{extra}'" + (" tensorflow" if not extra else "")
        ) from err


def versions() -> dict[str, str]:
    """``{"keras": ..., "backend": ..., "<backend package>": version}`` for provenance."""
    import keras

    backend = keras.backend.backend()
    module = sys.modules.get(backend) or __import__(backend)
    return {"keras": keras.__version__, "backend": backend, backend: getattr(module, "__version__", "unknown")}


def compile_function(fn: Callable[..., Any], reduce_retracing: bool = True) -> Callable[..., Any]:
    """``fn`` compiled for repeated calls: ``tf.function`` (TensorFlow), ``jax.jit`` (JAX), eager under PyTorch.

    ``fn`` takes and returns backend tensors; under JAX it must be pure (layers read
    their variables as constants).  Under PyTorch it runs without autograd recording
    (:func:`vjp` turns it on where a rule needs a gradient).

    Parameters
    ----------
    reduce_retracing : bool
        TensorFlow only: trace once for any batch size (True) or once per input shape.
    """
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, reduce_retracing=reduce_retracing)
    if backend == "jax":
        import jax

        return jax.jit(fn)
    import functools

    import torch

    @functools.wraps(fn)
    def no_grad(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return no_grad


def fused(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as one XLA-fused kernel under TensorFlow (element-wise chains); unchanged elsewhere.

    Under JAX the whole analyzer is one XLA program already; under PyTorch it stays eager.
    """
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    return fn


def vjp(
    forward: Callable[..., Any],
    inputs: Sequence[Any],
    cotangents: Any,
    return_outputs: bool = False,
) -> Any:
    """Vector-Jacobian product: the gradient of ``sum(cotangents * forward(*inputs))`` w.r.t. ``inputs``.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs)`` -> one tensor or a list of tensors.
    inputs : list of tensors
    cotangents : tensor, list of tensors, or callable
        Same structure and shapes as ``forward``'s output; a callable gets the outputs
        and returns them (so the forward is computed once, as LRP rules need).
    return_outputs : bool
        Also return ``forward``'s outputs (e.g. the logits beside their gradient).

    Returns
    -------
    list of tensors, one per input
        With ``return_outputs``: ``(outputs, gradients)``, ``outputs`` as ``forward``
        returned them (one tensor or a list).
    """
    backend = name()
    inputs = list(inputs)

    def as_list(out):
        return list(out) if isinstance(out, (list, tuple)) else [out]

    def cotangents_for(outputs):
        chosen = cotangents(outputs[0] if len(outputs) == 1 else outputs) if callable(cotangents) else cotangents
        return as_list(chosen)

    def result(outputs, gradients, single):
        if not return_outputs:
            return gradients
        return (outputs[0] if single else outputs), gradients

    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(inputs)
            raw = forward(*inputs)
            outputs = as_list(raw)
        gradients = tape.gradient(outputs, inputs, output_gradients=cotangents_for(outputs))
        return result(outputs, gradients, not isinstance(raw, (list, tuple)))
    if backend == "jax":
        import jax

        single: list[bool] = []
        outputs, pullback = jax.vjp(lambda *args: as_list(_note_single(forward(*args), single)), *inputs)
        return result(outputs, list(pullback(cotangents_for(outputs))), bool(single))
    import torch

    with torch.enable_grad():
        leaves = [x.detach().requires_grad_(True) for x in inputs]
        raw = forward(*leaves)
        outputs = as_list(raw)
        with torch.no_grad():
            chosen = [c.detach() for c in cotangents_for([o.detach() for o in outputs])]
        grads = torch.autograd.grad(outputs, leaves, grad_outputs=chosen, allow_unused=True)
    gradients = [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(leaves, grads)]
    return result([o.detach() for o in outputs], gradients, not isinstance(raw, (list, tuple)))


def _note_single(out, flag):
    """``out`` unchanged; appends to ``flag`` when it is one tensor (not a list), for :func:`vjp` under JAX."""
    if not isinstance(out, (list, tuple)):
        flag.append(True)
    return out


def read(variable: Any) -> Any:
    """The current value of a Keras variable as a plain backend tensor (not the variable object)."""
    value = getattr(variable, "value", variable)
    if name() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return value


def has_gpu() -> bool:
    """Whether the backend sees a GPU."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import torch

    return bool(torch.cuda.is_available())


def configure_threads(nprocs: int, log: logging.Logger) -> None:
    """Intra-op thread pool of the backend for ``--nprocs`` (logged; JAX's is fixed at start-up)."""
    backend = name()
    nprocs = int(nprocs)
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(nprocs)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, nprocs))
            note = ""
        except RuntimeError:
            note = " (TensorFlow was already initialised in this process; its earlier setting is kept)"
        log.info(
            "TensorFlow threads: intra-op %d, inter-op %d (--nprocs %d)%s",
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            nprocs,
            note,
        )
    elif backend == "torch":
        import torch

        torch.set_num_threads(nprocs)
        log.info("PyTorch threads: intra-op %d (--nprocs %d)", torch.get_num_threads(), nprocs)
    else:
        log.info("JAX threads: XLA's defaults (--nprocs %d is not applied under JAX)", nprocs)


def tensorflow_or_exit(purpose: str) -> ModuleType:
    """``import tensorflow`` for a TensorFlow-only feature, or raise a one-line error naming it.

    Raises
    ------
    deeplight_bids.exceptions.UsageError
        TensorFlow is not installed.
    """
    try:
        import tensorflow as tf
    except ImportError as err:
        raise UsageError(
            f"{purpose} needs TensorFlow, which is not installed; install it (pip install tensorflow) or leave "
            f"that option out"
        ) from err
    return tf
