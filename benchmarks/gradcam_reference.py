"""pytorch-grad-cam's GradCAMPlusPlus and ScoreCAM for the explainer benchmark: the package when it
imports, else a port of its computation.

The package (PyPI ``grad-cam``, module ``pytorch_grad_cam``; it also needs ``ttach``) imports
torchvision at import time for helpers that these two classes never call (image preprocessing,
detection-box targets, SESS). Where torchvision is not installed, :func:`load` imports the
package once with a stand-in ``torchvision`` that only satisfies those imports (any use raises),
then removes the stand-in from ``sys.modules``; the CAM code that runs is the package's own.
Where the package or ``ttach`` is missing, :func:`load` returns :class:`PortGradCAMPlusPlus` and
:class:`PortScoreCAM`, which follow grad-cam 1.5.7 step by step: the same forward hooks (every
captured activation and gradient copied to the host, also during Score-CAM's masked forwards),
the same backward of the summed target scores, channel weights in numpy, ReLU, per-image
min-max scaling and ``cv2.resize`` (bilinear, half-pixel centres) to the input size, then the
multi-layer aggregation's second scaling.
"""

from __future__ import annotations

import functools
import os
import sys
import types

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # ScoreCAM draws a progress bar per image


def _unavailable(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"torchvision is not installed; {name} is a stand-in for pytorch_grad_cam's import only")

    return fail


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    for name in ("Compose", "Normalize", "ToTensor", "Resize"):
        setattr(transforms, name, _unavailable(f"torchvision.transforms.{name}"))
    functional.resize = _unavailable("torchvision.transforms.functional.resize")
    ops.box_iou = _unavailable("torchvision.ops.box_iou")
    transforms.functional = functional
    root.transforms, root.ops = transforms, ops
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
        "torchvision.ops": ops,
    }


def _import_package():
    from pytorch_grad_cam import GradCAMPlusPlus, ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return GradCAMPlusPlus, ScoreCAM, ClassifierOutputTarget


@functools.cache  # once per process: a second import would find the package loaded and lose how it was
def load(mode: str = "auto"):
    """-> (GradCAMPlusPlus class, ScoreCAM class, label). ``mode``: auto | package | port.

    Both classes are used as ``with cls(model, target_layers=[module]) as cam: cam(input_tensor=x,
    targets=[int, ...])`` -> numpy [N, H, W]; the package's classes are wrapped so the targets are
    its ``ClassifierOutputTarget``.
    """
    if mode != "port":
        try:
            try:
                classes = _import_package()
                how = ""
            except ModuleNotFoundError as exc:
                if not (exc.name or "").startswith("torchvision"):
                    raise
                stand_in = _torchvision_stand_in()
                sys.modules.update(stand_in)
                try:
                    classes = _import_package()
                finally:
                    for name in stand_in:
                        if sys.modules.get(name) is stand_in[name]:
                            del sys.modules[name]
                how = ", torchvision stand-in for its imports"
            from importlib.metadata import version

            label = f"pytorch-grad-cam {version('grad-cam')}{how}"
            return _wrap(classes[0], classes[2]), _wrap(classes[1], classes[2]), label
        except ImportError as exc:
            if mode == "package":
                raise
            reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "--gradcam-reference port"
    return PortGradCAMPlusPlus, PortScoreCAM, f"pytorch-grad-cam (ported; package not used: {reason})"


def _wrap(cls, target_cls):
    class Wrapped(cls):
        def __call__(self, input_tensor, targets, **kwargs):
            return super().__call__(input_tensor=input_tensor, targets=[target_cls(int(t)) for t in targets], **kwargs)

    Wrapped.__name__ = cls.__name__
    return Wrapped


# ---------------------------------------------------------------- the port (grad-cam 1.5.7)
def _resize(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    try:
        import cv2

        return cv2.resize(np.float32(img), size_wh)
    except ImportError:  # cv2.INTER_LINEAR samples at half-pixel centres, as torch's align_corners=False
        import torch

        t = torch.from_numpy(np.float32(img))[None, None]
        return torch.nn.functional.interpolate(t, size=size_wh[::-1], mode="bilinear", align_corners=False)[0, 0].numpy()


def scale_cam_image(cam, target_size=None):
    result = []
    for img in cam:
        img = img - np.min(img)
        img = img / (1e-7 + np.max(img))
        if target_size is not None:
            img = _resize(img, target_size)
        result.append(img)
    return np.float32(result)


class _PortBaseCAM:
    uses_gradients = True

    def __init__(self, model, target_layers):
        self.model = model.eval()
        self.target_layers = target_layers
        self.device = next(model.parameters()).device
        self.activations: list = []
        self.gradients: list = []
        self.handles = [layer.register_forward_hook(self._save_activation) for layer in target_layers]
        self.handles += [layer.register_forward_hook(self._save_gradient) for layer in target_layers]

    def _save_activation(self, module, inputs, output):
        self.activations.append(output.cpu().detach())

    def _save_gradient(self, module, inputs, output):
        if not getattr(output, "requires_grad", False):
            return

        def store(grad):
            self.gradients = [grad.cpu().detach()] + self.gradients

        output.register_hook(store)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.activations, self.gradients = [], []
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def weights(self, input_tensor, targets, activations, grads) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, input_tensor, targets):
        input_tensor = input_tensor.to(self.device)
        self.activations, self.gradients = [], []
        outputs = self.model(input_tensor)
        if self.uses_gradients:
            self.model.zero_grad()
            loss = sum(output[int(t)] for t, output in zip(targets, outputs))
            loss.backward(retain_graph=True)
        activations = self.activations[0].numpy()
        grads = self.gradients[0].numpy() if self.gradients else None
        w = self.weights(input_tensor, targets, activations, grads)
        cam = np.maximum((w[:, :, None, None] * activations).sum(axis=1), 0)
        scaled = scale_cam_image(cam, (input_tensor.size(-1), input_tensor.size(-2)))[:, None]
        return scale_cam_image(np.mean(np.maximum(scaled, 0), axis=1))


class PortGradCAMPlusPlus(_PortBaseCAM):
    def weights(self, input_tensor, targets, activations, grads):
        grads_power_2 = grads**2
        grads_power_3 = grads_power_2 * grads
        sum_activations = np.sum(activations, axis=(2, 3))[:, :, None, None]
        aij = grads_power_2 / (2 * grads_power_2 + sum_activations * grads_power_3 + 0.000001)
        aij = np.where(grads != 0, aij, 0)
        return np.sum(np.maximum(grads, 0) * aij, axis=(2, 3))


class PortScoreCAM(_PortBaseCAM):
    uses_gradients = False
    batch_size = 16

    def weights(self, input_tensor, targets, activations, grads):
        import torch

        with torch.no_grad():
            upsample = torch.nn.UpsamplingBilinear2d(size=input_tensor.shape[-2:])
            upsampled = upsample(torch.from_numpy(activations).to(self.device))
            flat = upsampled.view(upsampled.size(0), upsampled.size(1), -1)
            maxs, mins = flat.max(dim=-1)[0][:, :, None, None], flat.min(dim=-1)[0][:, :, None, None]
            upsampled = (upsampled - mins) / (maxs - mins + 1e-8)
            input_tensors = input_tensor[:, None, :, :] * upsampled[:, :, None, :, :]
            scores = []
            for target, tensor in zip(targets, input_tensors):
                for i in range(0, tensor.size(0), self.batch_size):
                    scores.extend(o[int(target)].cpu().item() for o in self.model(tensor[i : i + self.batch_size]))
            scores = torch.Tensor(scores).view(activations.shape[0], activations.shape[1])
            return torch.nn.Softmax(dim=-1)(scores).numpy()
