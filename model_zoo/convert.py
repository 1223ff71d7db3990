"""Copy weights from a PyTorch zoo model into its Keras twin.

The twins share layer names (PyTorch ``layer1.0.conv1`` is Keras ``layer1_0_conv1``).
Layouts differ: conv kernels go ``[out, in, kh, kw] -> [kh, kw, in, out]``, linear
weights ``[out, in] -> [in, out]``; BatchNorm carries gamma, beta, running mean and
running variance in that order on both sides.
"""

from __future__ import annotations

import numpy as np


def keras_name(torch_name: str) -> str:
    return torch_name.replace(".", "_")


def torch_to_keras(torch_model, keras_model):
    """Copy every parameter and BatchNorm statistic of ``torch_model`` into ``keras_model``.

    Strict: each PyTorch layer with weights must have a Keras layer of the same name
    and shapes, and each Keras layer with weights must receive them.

    Returns:
        ``keras_model``, modified in place.
    """
    from torch import nn

    copied = set()
    for name, module in torch_model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.dilation != (1, 1):
                raise ValueError(f"{name}: only plain convolutions are supported")
            weights = [_numpy(module.weight).transpose(2, 3, 1, 0)]
        elif isinstance(module, nn.Linear):
            weights = [_numpy(module.weight).T]
        elif isinstance(module, nn.BatchNorm2d):
            weights = [_numpy(t) for t in (module.weight, module.bias, module.running_mean, module.running_var)]
        elif any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"{name}: no Keras conversion for {type(module).__name__}")
        else:
            continue
        if getattr(module, "bias", None) is not None and not isinstance(module, nn.BatchNorm2d):
            weights.append(_numpy(module.bias))

        layer = keras_model.get_layer(keras_name(name))
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if expected != [w.shape for w in weights]:
            raise ValueError(f"{name}: PyTorch shapes {[w.shape for w in weights]} do not fit Keras {expected}")
        layer.set_weights(weights)
        copied.add(layer.name)

    missed = [layer.name for layer in keras_model.layers if layer.weights and layer.name not in copied]
    if missed:
        raise ValueError(f"Keras layers without a PyTorch counterpart: {', '.join(missed)}")
    return keras_model


def _numpy(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().astype(np.float32))
