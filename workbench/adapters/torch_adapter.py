"""PyTorch implementation of :class:`ModelAdapter` (nn.Module, including onnx2torch conversions)."""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import Sequence

import numpy as np
import torch

from ..errors import LayerError, ModelRejected, ParameterError
from .base import (
    GraphNode, LayerGraph, LayerInfo, LayerPass, ModelAdapter, StatisticsPass, finish_moments, moments, only_resamples, token_grid,
)

DEFAULT_INPUT_SIZE = (224, 224, 3)
# Modules that act on the last axis: a 4-D output of theirs is channels-last ([N, H, W, C]),
# as in ConvNeXt blocks and Swin stages, not the NCHW of convolutions.
CHANNELS_LAST_KINDS = frozenset({"Linear", "LayerNorm", "RMSNorm", "ConvNextLayerNorm", "SwinPatchMerging"})


def resolve_device(device: str) -> "torch.device":
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError("CUDA was requested but no CUDA device is available; use --device cpu.")
    return torch.device(device)


class TorchAdapter(ModelAdapter):
    """Wraps an ``nn.Module`` classifier.

    The adapter owns the module it is given: it is put in eval mode and on the adapter's
    device once, here. Calls never leave hooks or changed state on it afterwards.
    """

    framework = "pytorch"

    def __init__(
        self,
        module: "torch.nn.Module",
        *,
        name: str,
        source_format: str,
        input_size: tuple[int, int, int] | None = None,
        labels: Sequence[str] | None = None,
        preset: str = "unit",
        device: str = "auto",
        fingerprint: str = "",
        layout: str = "NCHW",
    ):
        if not isinstance(module, torch.nn.Module):
            raise ModelRejected(f"Expected a torch.nn.Module, got {type(module).__name__}.")
        if layout not in ("NCHW", "NHWC"):
            raise ParameterError(f"Unknown layout {layout!r}; use NCHW or NHWC.")
        super().__init__(
            name=name,
            source_format=source_format,
            input_size=tuple(input_size or DEFAULT_INPUT_SIZE),
            labels=labels,
            preset=preset,
            fingerprint=fingerprint,
            layout=layout,
        )
        self._device = resolve_device(device)
        self._forms: dict[str, tuple] = {}
        self.module = module.eval().to(self._device)
        self._modules = dict(module.named_modules())

    # ------------------------------------------------------------------ device arrays and conversions
    @property
    def xp(self):
        import array_api_compat.torch as xp

        return xp

    def device_array(self, host) -> "torch.Tensor":
        if isinstance(host, torch.Tensor):
            return host.to(self._device, torch.float32)
        return torch.from_numpy(np.ascontiguousarray(host, dtype=np.float32)).to(self._device)

    def to_host(self, array) -> np.ndarray:
        if isinstance(array, torch.Tensor):
            array = array.detach()
            if array.dtype in (torch.float16, torch.bfloat16):
                array = array.float()
            array = array.cpu().numpy()
        return super().to_host(array)

    def rows_to_host(self, rows: list) -> list[np.ndarray]:
        # rows that are exactly t[0], t[1], ... of one tensor t (a batch's maps) go as t itself, without a stack
        base = getattr(rows[0], "_base", None)
        if (
            isinstance(base, torch.Tensor)
            and base.dtype == torch.float32
            and len(base) == len(rows)
            and all(
                isinstance(r, torch.Tensor) and r._base is base and r.data_ptr() == base[i].data_ptr()
                and r.shape == base[i].shape and r.stride() == base[i].stride()
                for i, r in enumerate(rows)
            )
        ):
            return list(self.to_host(base))
        return super().rows_to_host(rows)

    def _to_tensor(self, batch) -> "torch.Tensor":
        """NHWC model input (numpy, or a tensor on any device) -> the module's layout on its device."""
        x = self.device_array(batch)
        if self.layout == "NCHW":
            x = x.permute(0, 3, 1, 2).contiguous()
        return x

    def _input_grad_nhwc(self, grad: "torch.Tensor") -> "torch.Tensor":
        if self.layout == "NCHW":
            grad = grad.permute(0, 2, 3, 1)
        return grad.detach().float()

    @staticmethod
    def _channels_last(t: "torch.Tensor") -> np.ndarray:
        t = t.detach().float()
        if t.ndim == 4:
            t = t.permute(0, 2, 3, 1)
        return t.cpu().numpy()

    def _grid_form(self, layer: str) -> tuple:
        """How a layer's raw output becomes [N, h, w, c]: ("nchw",), ("nhwc",), ("tokens", prefix, h, w) or ("raw",)."""
        self.layers()  # traced once (outside any hook), which records the forms
        return self._forms.get(layer, ("raw",))

    @staticmethod
    def _as_grid(t: "torch.Tensor", form: tuple) -> "torch.Tensor":
        """A layer's raw output -> [N, h, w, c] on its device (a view where the layout allows)."""
        t = t.detach().float()
        if form[0] == "nchw" and t.ndim == 4:
            t = t.permute(0, 2, 3, 1)
        elif form[0] == "tokens" and t.ndim == 3:
            # pytorch-grad-cam's ViT reshape_transform: drop the leading (class, ...) tokens, patches to the grid
            _, prefix, h, w = form
            t = t[:, prefix:, :].reshape(t.shape[0], h, w, t.shape[2])
        return t

    def _forward(self, x: "torch.Tensor") -> "torch.Tensor":
        transform = self._score_transform()
        if transform == "peel":
            # The final Softmax hands on its input: the model returns its logits. Under the lock, as
            # every hook is, so a view explaining probabilities never runs while it is attached.
            with self.lock:
                handle = self._modules[self._softmax_name].register_forward_hook(lambda _m, inputs, _o: inputs[0])
                try:
                    out = self.module(x)
                finally:
                    handle.remove()
        else:
            out = self.module(x)
        if transform == "softmax" and isinstance(out, torch.Tensor):
            out = torch.softmax(out, dim=1)
        if not isinstance(out, torch.Tensor):
            raise ModelRejected(
                f"The model returns {type(out).__name__}, not a tensor; an image classifier must return [batch, classes]."
            )
        return out

    def _find_softmax_head(self) -> bool:
        """The last Softmax module whose output is the model's output (peelable: its input is the logits)."""
        if isinstance(self.module, torch.jit.ScriptModule):
            return False
        seen: dict[str, torch.Tensor] = {}
        handles = []
        for name, module in self.module.named_modules():
            kind = type(module).__name__
            if name and "Softmax" in kind and "Log" not in kind and not getattr(module, "is_log", False):
                handles.append(module.register_forward_hook(lambda _m, _i, out, _n=name: seen.__setitem__(_n, out)))
        if not handles:
            return False
        try:
            with self.lock, torch.inference_mode():
                out = self.module(self._to_tensor(self.test_input(2)))
        finally:
            for handle in handles:
                handle.remove()
        for name, value in reversed(list(seen.items())):
            if isinstance(value, torch.Tensor) and isinstance(out, torch.Tensor) and value.shape == out.shape and torch.equal(value, out):
                self._softmax_name = name
                return True
        return False

    def _target_sum(self, out: "torch.Tensor", targets: Sequence[int]) -> "torch.Tensor":
        idx = torch.as_tensor(np.asarray(targets, dtype=np.int64), device=out.device)
        return out.gather(1, idx[:, None]).sum()

    def _no_hooks_reason(self) -> str | None:
        if isinstance(self.module, torch.jit.ScriptModule):
            return (
                "TorchScript models take no Python hooks, so CAM methods (which read a layer's activations) cannot "
                "run; gradient and perturbation methods do. For CAM methods upload an ONNX export or a state_dict."
            )
        if type(self.module).__name__ == "ExportedClassifier":
            return (
                "A torch.export program is one flat graph without layers to hook, so CAM methods cannot run; gradient "
                "and perturbation methods do. For CAM methods upload an ONNX export (torch.onnx.export)."
            )
        return None

    def default_cam_layer(self) -> str:
        reason = self._no_hooks_reason()
        if reason:
            raise LayerError(reason)
        return super().default_cam_layer()

    def _get_module(self, layer: str) -> "torch.nn.Module":
        reason = self._no_hooks_reason()
        if reason:
            raise LayerError(reason)
        try:
            return self._modules[layer]
        except KeyError:
            raise LayerError(f"No layer named {layer!r}; pick one from the layers table.") from None

    @contextlib.contextmanager
    def _capture(self, layer: str, gradients: bool = False):
        """Forward hook on one module for the duration of one call (under the model's lock).

        With ``gradients``, the forward pass is meant to run without autograd: the hook turns it on
        at the layer and makes the captured output a leaf that needs a gradient, so only the ops
        after the layer are recorded and the backward pass starts and ends there.
        """
        captured: dict[str, torch.Tensor] = {}

        def hook(_module, _inputs, output):
            if not isinstance(output, torch.Tensor):
                captured["out"] = output
                return None
            if gradients:
                torch.set_grad_enabled(True)  # until the caller's no_grad() block ends
                output = output.detach().requires_grad_(True)
            captured["out"] = output
            # Hand the rest of the forward pass a copy, so in-place ops after this layer
            # (``out += identity`` in residual blocks) cannot overwrite what we keep (as captum does).
            return output.clone()

        with self.lock:
            handle = self._get_module(layer).register_forward_hook(hook)
            try:
                yield captured
            finally:
                handle.remove()

    # ------------------------------------------------------------------ primitives
    # Every forward pass holds the model's lock: a hook that ``_capture`` registers for one call is
    # seen by every thread, so a forward pass running beside it would go through the hook, get a
    # detached layer output (its input gradient cut off) and overwrite what the hook captured.
    def predict_on_device(self, x):
        with self.lock, torch.no_grad():
            return self._forward(self._to_tensor(x)).float()

    def input_gradients_on_device(self, x, targets):
        x = self._to_tensor(x).requires_grad_(True)
        with self.lock, torch.enable_grad():
            out = self._forward(x)
            (grad,) = torch.autograd.grad(self._target_sum(out, targets), x)
        return out.detach().float(), self._input_grad_nhwc(grad)

    def layer_gradients_on_device(self, x, layer, targets):
        x = self._to_tensor(x)
        form = self._grid_form(layer)
        with self._capture(layer, gradients=True) as captured:
            with torch.no_grad():  # the hook turns autograd on at the layer
                out = self._forward(x)
            act = captured.get("out")
            if not isinstance(act, torch.Tensor):
                raise LayerError(f"Layer {layer!r} did not produce a single tensor in the forward pass.")
            if not out.requires_grad:
                raise LayerError(f"The model's output does not depend on layer {layer!r}.")
            (grad,) = torch.autograd.grad(self._target_sum(out, targets), act)
        return LayerPass(outputs=out.detach().float(), activations=self._as_grid(act, form), gradients=self._as_grid(grad, form))

    def layer_activations_on_device(self, x, layer):
        form = self._grid_form(layer)
        with self._capture(layer) as captured, torch.no_grad():
            out = self._forward(self._to_tensor(x))
            act = captured.get("out")
            if not isinstance(act, torch.Tensor):
                raise LayerError(f"Layer {layer!r} did not produce a single tensor in the forward pass.")
            return out.float(), self._as_grid(act, form)

    # the numpy primitives: the device ones, then to the host
    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.to_host(self.predict_on_device(batch))

    def input_gradients(self, batch, targets):
        out, grad = self.input_gradients_on_device(batch, targets)
        return self.to_host(out), self.to_host(grad)

    def layer_gradients(self, batch, layer, targets):
        p = self.layer_gradients_on_device(batch, layer, targets)
        return LayerPass(outputs=self.to_host(p.outputs), activations=self.to_host(p.activations), gradients=self.to_host(p.gradients))

    def layer_activations(self, batch, layer):
        out, act = self.layer_activations_on_device(batch, layer)
        return self.to_host(out), self.to_host(act)

    def _trace_layers(self) -> list[LayerInfo]:
        self._forms = {}
        if self._no_hooks_reason():
            return []  # compiled modules take no Python hooks: gradient methods work, layer (CAM) methods do not
        records: dict[str, LayerInfo] = {}
        counter = [0]
        handles = []
        resampled: list = []  # outputs of resampling layers: a block that returns one only resamples too

        def make_hook(name):
            def hook(module, _inputs, output):
                if isinstance(output, torch.Tensor):
                    kind = type(module).__name__
                    shape = tuple(int(s) for s in output.shape[1:])
                    form: tuple = ("raw",)
                    prefix = None
                    if output.ndim < 3 or output.shape[0] != 1:  # the trace runs one image; windows fold into the batch
                        pass
                    elif output.ndim == 4 and kind in CHANNELS_LAST_KINDS:
                        form = ("nhwc",)
                    elif output.ndim == 4:
                        shape, form = (shape[1], shape[2], shape[0]), ("nchw",)
                    elif output.ndim == 3 and (grid := token_grid(shape, self.input_size)) is not None:
                        prefix, gh, gw = grid
                        shape, form = (gh, gw, shape[1]), ("tokens", prefix, gh, gw)
                    resamples = only_resamples(kind) or any(output is seen for seen in resampled)
                    if resamples:
                        resampled.append(output)
                    counter[0] += 1
                    self._forms[name] = form
                    records[name] = LayerInfo(name, kind, shape, counter[0], resamples=resamples, prefix_tokens=prefix)

            return hook

        for name, module in self.module.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        try:
            with torch.inference_mode():
                self._forward(self._to_tensor(self.test_input(1)))
        finally:
            for handle in handles:
                handle.remove()
        return sorted(records.values(), key=lambda info: info.order)

    def randomisable_layers(self) -> tuple[str, ...]:
        # Quantus's rule: every module that can reset its own parameters (Conv, Linear, BatchNorm, ...),
        # in registration order reversed, so the classifier comes first
        if isinstance(self.module, torch.jit.ScriptModule):
            return ()
        return tuple(name for name, module in reversed(list(self.module.named_modules())) if name and hasattr(module, "reset_parameters"))

    def randomised_copy(self, layers_from_top: int, seed: int) -> "TorchAdapter":
        """A deep copy of the module with the top layers re-initialised by their own ``reset_parameters``.

        Every layer is re-initialised right after ``torch.manual_seed(seed + 1)``, as Quantus 0.6 does,
        inside ``torch.random.fork_rng`` so the process's random state is left as it was.
        """
        names = self._check_randomised_count(layers_from_top)
        with self.lock:
            module = copy.deepcopy(self.module)
        modules = dict(module.named_modules())
        devices = [self._device.index or 0] if self._device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for name in names:
                torch.manual_seed(seed + 1)
                modules[name].reset_parameters()
        twin = copy.copy(self)  # same preset, labels, layer table and validated output kind
        twin.module = module.eval()
        twin._modules = modules
        twin.lock = threading.RLock()
        twin.fingerprint = f"{self.fingerprint}|randomised:{len(names)}:{seed}"
        return twin

    def attention_maps(self, batch: np.ndarray) -> list[np.ndarray]:
        attentions = getattr(self.module, "attentions", None)
        if not callable(attentions):
            return super().attention_maps(batch)
        with self.lock, torch.inference_mode():
            found = attentions(self._to_tensor(batch))
        if not found:
            return super().attention_maps(batch)
        return [a.float().cpu().numpy() for a in found]

    # ------------------------------------------------------------------ inspection: every layer at once
    @staticmethod
    def _moments_kwargs(output: "torch.Tensor") -> dict:
        """Reduce one layer output [N, ...] in the framework; only [N, C] arrays go to the host.

        The usual case (everything finite) takes per-channel sums, sums of squares, minima and maxima
        and a count of non-zeros — single-pass vectorised reductions (std_mean's Welford loop costs
        as much as the forward pass). NaN/Inf counts and finite-only statistics are computed only when
        the sums show something not finite.
        """
        t = output.detach()
        if not t.is_floating_point():
            t = t.float()
        n = t.shape[0]
        if t.ndim == 1:
            v = t.reshape(n, 1, 1)
        elif t.ndim == 4:  # NCHW
            v = t.reshape(n, t.shape[1], -1)
        else:  # channels last: [N, F] or [N, T, D]
            v = t.reshape(n, -1, t.shape[-1]).transpose(1, 2)
        # count_nonzero along a dimension: ~5x faster than over the whole tensor on a CPU
        sums = torch.stack([
            v.sum(dim=2), torch.linalg.vector_norm(v, 2, dim=2), v.amin(dim=2), v.amax(dim=2), torch.count_nonzero(v, dim=2).to(v.dtype)
        ])
        host = sums.double().cpu().numpy()
        if np.all(np.isfinite(host)):
            zeros = t.numel() - int(host[4].sum())
            return dict(
                sums=(host[0], host[1] ** 2, v.shape[2]), zeros=zeros,
                nan=np.zeros(n, dtype=np.int64), inf=np.zeros(n, dtype=np.int64),
                cmin=host[2], cmax=host[3],
                exact=lambda: torch.std_mean(t.double(), correction=0),
            )
        mask = torch.isfinite(v)
        values = torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device)).double()
        per_channel = mask.sum(dim=2)
        cmax = torch.where(mask, v, torch.full((), -float("inf"), dtype=v.dtype, device=v.device)).amax(dim=2)
        cmin = torch.where(mask, v, torch.full((), float("inf"), dtype=v.dtype, device=v.device)).amin(dim=2)
        count = int(per_channel.sum())
        mean = float(values.sum() / count) if count else None
        std = float(torch.sqrt(torch.where(mask, (values - mean) ** 2, torch.zeros_like(values)).sum() / count)) if count else None
        return dict(
            finite=count, mean=mean, std=std, zeros=int((v == 0).sum()),
            minimum=float(cmin.min()) if count else None, maximum=float(cmax.max()) if count else None,
            nan=torch.isnan(v).reshape(n, -1).sum(dim=1).cpu().numpy(),
            inf=torch.isinf(v).reshape(n, -1).sum(dim=1).cpu().numpy(),
            channel_mean=(values.sum(dim=2) / per_channel.clamp(min=1)).cpu().numpy(),
            cmin=torch.where(per_channel > 0, cmin, torch.zeros_like(cmin)).double().cpu().numpy(),
            cmax=torch.where(per_channel > 0, cmax, torch.zeros_like(cmax)).double().cpu().numpy(),
        )

    @staticmethod
    def _shape_channels_last(t: "torch.Tensor") -> tuple[int, ...]:
        shape = tuple(int(s) for s in t.shape[1:])
        return (shape[1], shape[2], shape[0]) if t.ndim == 4 else shape

    def layer_statistics(self, batch, targets=None, *, gradients=True):
        self._ensure_validated()  # validation's own forward pass must not run through this call's hooks
        if isinstance(self.module, torch.jit.ScriptModule):
            raise LayerError("TorchScript models expose no layers; upload a state_dict or an ONNX export to inspect them.")
        x = self._to_tensor(batch)
        with self.lock:
            found = self._statistics_pass(x, targets, gradients, copies=False)
            if found is None:  # an in-place op changed a kept output: again, handing copies on
                found = self._statistics_pass(x, targets, gradients, copies=True)
        found, aliases, norms, out, targets = found
        layers = []
        order = {name: i for i, name in enumerate(found)}
        for name, source in aliases.items():  # containers come right after the child they end with
            if source in found:
                order[name] = order[source] + 0.5
        for name in sorted(order, key=order.get):
            source = aliases.get(name, name)
            grad = norms.get(source) if gradients else None
            if gradients and grad is None:
                grad = np.zeros(len(batch))  # the output does not depend on it (or it needs no gradient)
            layers.append(moments(name, grad_norm=grad, **found[source]))
        return StatisticsPass(
            outputs=out.detach().float().cpu().numpy(),
            targets=np.asarray(targets, dtype=np.int64),
            layers=tuple(layers),
        )

    def _statistics_pass(self, x, targets, gradients: bool, copies: bool):
        """One forward (and backward) pass with a hook on every module; None when ``copies`` is off and an
        in-place op overwrote an output whose gradient was wanted (``relu(inplace=True)`` after a norm).

        Copying every output costs a pass over all activations, so it is done only for such models.
        """
        found: dict[str, dict] = {}  # name -> moments kwargs, in the order the layers finish
        kept: dict[str, tuple] = {}  # name -> (output, its version), for the gradients
        aliases: dict[str, str] = {}  # a container whose output is its last child's: name -> that child
        made: dict[int, tuple] = {}  # id(tensor handed on) -> (layer, its version then, weak reference)

        def make_hook(name):
            def hook(_module, _inputs, output):
                if not isinstance(output, torch.Tensor) or output.ndim == 0 or output.numel() == 0:
                    return None
                seen = made.get(id(output))
                if seen is not None and seen[2]() is output and seen[1] == output._version:
                    found.pop(name, None)
                    aliases[name] = seen[0]
                    return None
                found.pop(name, None)  # a module called twice: its last call counts, in its place
                aliases.pop(name, None)
                found[name] = finish_moments(self._shape_channels_last(output), **self._moments_kwargs(output))
                handed = output
                if gradients and output.requires_grad:
                    kept[name] = (output, output._version)
                    if copies:  # the rest of the forward gets a copy, which in-place ops may change
                        handed = output.clone()
                made[id(handed)] = (name, handed._version, weakref.ref(handed))
                return handed if handed is not output else None

            return hook

        handles = [m.register_forward_hook(make_hook(name)) for name, m in self.module.named_modules() if name]
        try:
            if not gradients:
                with torch.no_grad():
                    out = self._forward(x)
                if targets is None:
                    targets = out.argmax(dim=1).cpu().numpy()
                return found, aliases, {}, out, targets
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)  # so that layers without weights at the start are differentiable
                out = self._forward(x)
                if targets is None:
                    targets = out.detach().argmax(dim=1).cpu().numpy()
                if not copies and any(t._version != version for t, version in kept.values()):
                    return None
                names = list(kept)
                grads = [None] * len(names)
                if names and out.requires_grad:
                    grads = torch.autograd.grad(self._target_sum(out, targets), [kept[k][0] for k in names], allow_unused=True)
            norms = {
                k: torch.linalg.vector_norm(g.detach().reshape(g.shape[0], -1), dim=1).double().cpu().numpy()
                for k, g in zip(names, grads)
                if g is not None
            }
            return found, aliases, norms, out, targets
        finally:
            for handle in handles:
                handle.remove()

    def layer_weights(self, layer):
        module = self._get_module(layer)
        named = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        return {name: t.detach().float().cpu().numpy() for name, t in named if t.is_floating_point()}

    def layer_graph(self):
        """The dataflow between leaf modules, recorded on one forward pass of a test input.

        Hooks on the leaf modules (this model's only, under its lock) see each module's input and output
        tensors; a ``TorchFunctionMode`` (thread-local) sees the operations between modules — the ``+`` of a
        residual block, ``flatten`` — so branches are real edges. ``torch.fx`` tracing is not used: it patches
        ``nn.Module.__call__`` for every model in the process while it runs.
        """
        self._ensure_validated()  # validation's own forward pass must not run through this call's hooks
        if isinstance(self.module, torch.jit.ScriptModule):
            return super().layer_graph()
        from torch.overrides import TorchFunctionMode

        producer: dict[int, str] = {}  # id(tensor) -> the node that made it
        alive: list = []  # every tensor seen, so that ids stay unique during the pass
        nodes = [GraphNode("input", "Input", False, 0)]
        edges: list[tuple[str, str]] = []
        inside: list[str] = []  # the leaf module running now (operations inside it are its own)
        counts: dict[str, int] = {}

        def tensors(values):
            for value in values:
                if isinstance(value, torch.Tensor):
                    yield value
                elif isinstance(value, (list, tuple)):
                    yield from tensors(value)

        def connect(name, inputs):
            for t in tensors(inputs):
                source = producer.get(id(t))
                if source is not None and (source, name) not in edges:
                    edges.append((source, name))

        def produced(name, outputs):
            for t in tensors([outputs]):
                alive.append(t)
                producer[id(t)] = name

        class Between(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if inside:
                    return out
                inputs = [t for t in tensors(list(args) + list((kwargs or {}).values())) if id(t) in producer]
                if not inputs or not any(True for _ in tensors([out])):
                    return out
                base = getattr(func, "__name__", str(func)).strip("_") or "op"
                counts[base] = counts.get(base, 0) + 1
                name = base if counts[base] == 1 else f"{base}_{counts[base] - 1}"
                nodes.append(GraphNode(name, base, False, 0))
                connect(name, inputs)
                produced(name, out)
                return out

        def before(name):
            def hook(_module, inputs):
                if not inside:
                    connect(name, inputs)
                inside.append(name)

            return hook

        def after(name, module):
            def hook(_module, _inputs, output):
                inside.pop()
                if not inside:
                    own = sum(t.numel() for t in module.parameters()) + sum(b.numel() for b in module.buffers() if b.is_floating_point())
                    nodes.append(GraphNode(name, type(module).__name__, True, int(own)))
                    produced(name, output)

            return hook

        leaves = [(name, m) for name, m in self.module.named_modules() if name and not any(True for _ in m.children())]
        x = self._to_tensor(self.test_input(1))
        with self.lock:
            handles = []
            for name, module in leaves:
                handles.append(module.register_forward_pre_hook(before(name)))
                handles.append(module.register_forward_hook(after(name, module)))
            try:
                produced("input", x)
                with torch.no_grad(), Between():
                    out = self._forward(x)
            except Exception:  # noqa: BLE001 - a model this cannot follow still has its layers in order
                return super().layer_graph()
            finally:
                for handle in handles:
                    handle.remove()
        nodes.append(GraphNode("output", "Output", False, 0))
        connect("output", [out])
        # operations whose result never reaches the output (``x.sum() > 0`` deciding a branch) are not dataflow
        feeds: dict[str, list[str]] = {}
        for a, b in edges:
            feeds.setdefault(b, []).append(a)
        used, todo = {"output"}, ["output"]
        while todo:
            for source in feeds.get(todo.pop(), []):
                if source not in used:
                    used.add(source)
                    todo.append(source)
        keep = {n.name for n in nodes if n.layer or n.name in used}
        return LayerGraph(
            tuple(n for n in nodes if n.name in keep), tuple(e for e in edges if e[0] in keep and e[1] in keep), traced=True
        )

    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    @property
    def device(self) -> str:
        if self._device.type == "cuda":
            index = self._device.index or 0
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        return str(self._device)

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, torch.cuda.OutOfMemoryError) or (
            isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
        )

    def free_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
