"""The PyTorch twin of a Keras 3D-DeepLight: the same weights in a ``torch.nn.Sequential``.

:func:`export_keras` writes a Keras model's layers and weights as plain arrays (in the
Keras process); :func:`build_twin` builds the PyTorch model from them (in a process with
PyTorch, e.g. beside zennit or Captum).  Layout: kernels ``(kz, ky, kx, in, out) -> (out,
in, kz, ky, kx)``, inputs channels-last -> channels-first; TensorFlow's asymmetric "same"
padding of stride-2 convolutions becomes an explicit ``ConstantPad3d``; a conv's fused
ReLU becomes its own ``nn.ReLU``, global average pooling ``AdaptiveAvgPool3d(1)`` +
``Flatten``.  Used by ``bench_zennit.py`` (timing) and ``attribution_parity.py``
(Captum and zennit as references for the attribution methods).
"""

import json

import numpy as np


def export_keras(model):
    """``(arrays, layers)``: every weight as NumPy, and one JSON-able entry per Keras layer (kind, options)."""
    arrays, layers = {}, []
    for i, layer in enumerate(model.layers):
        kind = type(layer).__name__
        entry = {"kind": kind}
        if kind == "Conv3D":
            kernel, bias = layer.get_weights()
            arrays[f"{i}_kernel"], arrays[f"{i}_bias"] = kernel, bias
            entry.update(
                stride=int(layer.strides[0]),
                k=int(layer.kernel_size[0]),
                padding=layer.padding,
                relu=layer.activation.__name__ == "relu",
            )
        elif kind == "BatchNormalization":
            for name, value in zip(("gamma", "beta", "mean", "var"), layer.get_weights()):
                arrays[f"{i}_{name}"] = value
            entry["eps"] = float(layer.epsilon)
        elif kind == "Activation":
            entry["relu"] = layer.activation.__name__ == "relu"
        layers.append(entry)
    return arrays, layers


def save_keras(model, path, **extra):
    """:func:`export_keras` into one ``.npz`` (``layers`` as JSON text), with ``extra`` arrays."""
    arrays, layers = export_keras(model)
    np.savez(path, layers=np.array(json.dumps(layers)), **arrays, **extra)


def build_twin(arrays, layers, spatial_shape):
    """The ``torch.nn.Sequential`` twin (eval mode, parameters without gradients).

    Parameters
    ----------
    arrays : mapping
        :func:`export_keras`'s arrays (or the loaded ``.npz``).
    layers : list of dict or str
        :func:`export_keras`'s layer entries (or their JSON text).
    spatial_shape : sequence of int
        The input's spatial shape ``(z, y, x)``.
    """
    import torch
    from torch import nn

    if isinstance(layers, str):
        layers = json.loads(layers)
    shape = list(spatial_shape)
    modules = []
    for i, entry in enumerate(layers):
        kind = entry["kind"]
        if kind == "Conv3D":
            kernel = torch.from_numpy(np.ascontiguousarray(np.transpose(arrays[f"{i}_kernel"], (4, 3, 0, 1, 2))))
            k, s = entry["k"], entry["stride"]
            out = [-(-n // s) for n in shape]
            pads = []
            for n, o in zip(shape, out):
                total = max((o - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            symmetric = all(a == b for a, b in pads)
            if not symmetric:  # TF "same": the extra pad goes after
                modules.append(nn.ConstantPad3d(tuple(v for a, b in reversed(pads) for v in (a, b)), 0.0))
            conv = nn.Conv3d(
                kernel.shape[1], kernel.shape[0], k, stride=s, padding=tuple(a for a, _ in pads) if symmetric else 0
            )
            conv = conv.to(kernel.dtype)
            conv.weight.data.copy_(kernel)
            conv.bias.data.copy_(torch.from_numpy(np.asarray(arrays[f"{i}_bias"])))
            modules.append(conv)
            if entry["relu"]:
                modules.append(nn.ReLU())
            shape = out
        elif kind == "BatchNormalization":
            bn = nn.BatchNorm3d(len(arrays[f"{i}_gamma"]), eps=entry["eps"]).to(
                torch.from_numpy(arrays[f"{i}_gamma"]).dtype
            )
            bn.weight.data.copy_(torch.from_numpy(np.asarray(arrays[f"{i}_gamma"])))
            bn.bias.data.copy_(torch.from_numpy(np.asarray(arrays[f"{i}_beta"])))
            bn.running_mean.copy_(torch.from_numpy(np.asarray(arrays[f"{i}_mean"])))
            bn.running_var.copy_(torch.from_numpy(np.asarray(arrays[f"{i}_var"])))
            modules.append(bn)
        elif kind == "Activation" and entry["relu"]:
            modules.append(nn.ReLU())
        elif kind == "GlobalAveragePooling3D":
            modules += [nn.AdaptiveAvgPool3d(1), nn.Flatten()]
    model = nn.Sequential(*modules).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def channels_first(x):
    """``(batch, z, y, x, 1)`` NumPy -> ``(batch, 1, z, y, x)`` torch tensor (same dtype)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 4, 1, 2, 3))))
