"""Keras 3 (TensorFlow backend) implementation of :class:`ModelAdapter`."""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import threading
import weakref
from typing import Iterator, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

from ..errors import LayerError, ModelRejected, ParameterError  # noqa: E402
from .base import (  # noqa: E402
    CANCELLATION, GraphNode, LayerGraph, LayerInfo, LayerPass, ModelAdapter, StatisticsPass, finish_moments, moments,
    only_resamples, token_grid,
)

DEFAULT_INPUT_SIZE = (224, 224, 3)
_growth_lock = threading.Lock()
_growth_done = False


def enable_memory_growth() -> None:
    """Let TensorFlow take GPU memory as needed so PyTorch can share the card. Runs once per process."""
    global _growth_done
    with _growth_lock:
        if _growth_done:
            return
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised: growth can no longer be changed
                pass
        _growth_done = True


def resolve_device(device: str) -> str:
    gpus = tf.config.list_logical_devices("GPU")
    if device in (None, "", "auto"):
        return "/GPU:0" if gpus else "/CPU:0"
    if device.startswith(("cuda", "gpu", "GPU", "/GPU")):
        if not gpus:
            raise ParameterError("A GPU was requested but TensorFlow sees none; use --device cpu.")
        index = device.split(":")[-1] if ":" in device else "0"
        return f"/GPU:{index}"
    if device in ("cpu", "CPU", "/CPU:0"):
        return "/CPU:0"
    raise ParameterError(f"Unknown device {device!r}; use auto, cpu or cuda.")


def _walk(model: "keras.Model", prefix: str = "") -> Iterator[tuple[str, "keras.layers.Layer"]]:
    """Every layer, nested models included, named by its path ('outer/inner')."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.layers.InputLayer):
            continue
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer, prefix=f"{path}/")


def _layout(input_shape) -> str:
    # channels_first when the second axis looks like channels and the last does not
    if len(input_shape) == 4 and input_shape[1] in (1, 3, 4) and input_shape[-1] not in (1, 3, 4):
        return "NCHW"
    return "NHWC"


class KerasAdapter(ModelAdapter):
    """Wraps a Keras 3 model. Layer access patches one layer's ``call`` for one call, under the model's lock."""

    framework = "keras"

    def __init__(
        self,
        model: "keras.Model",
        *,
        name: str,
        source_format: str,
        labels: Sequence[str] | None = None,
        preset: str = "unit",
        device: str = "auto",
        fingerprint: str = "",
        input_size: tuple[int, int, int] | None = None,
    ):
        enable_memory_growth()
        if not isinstance(model, keras.Model):
            raise ModelRejected(f"Expected a keras.Model, got {type(model).__name__}.")
        try:
            shape = tuple(model.input_shape)
        except (AttributeError, ValueError):
            shape = (None, None, None, None)
        if isinstance(shape[0], tuple):
            raise ModelRejected("The model takes several inputs; an image classifier takes one image batch.")
        if len(shape) != 4:
            raise ModelRejected(f"The model's input has shape {shape}; an image classifier takes [batch, H, W, C].")
        layout = _layout(shape)
        h, w, c = (shape[2], shape[3], shape[1]) if layout == "NCHW" else (shape[1], shape[2], shape[3])
        default = tuple(input_size or DEFAULT_INPUT_SIZE)
        size = (h or default[0], w or default[1], c or default[2])
        super().__init__(
            name=name,
            source_format=source_format,
            input_size=size,
            labels=labels,
            preset=preset,
            fingerprint=fingerprint,
            layout=layout,
        )
        self.model = model
        self._device = resolve_device(device)
        self._layers_by_path = dict(_walk(model))
        self._compiled: dict[tuple[str, str], object] = {}  # (function, score transform) -> tf.function, shared by views
        self._logits_head = None  # (features model, final layer) once a softmax head is found

    # ------------------------------------------------------------------ conversions
    def _to_tensor(self, batch: np.ndarray):
        x = tf.convert_to_tensor(np.ascontiguousarray(batch, dtype=np.float32))
        if self.layout == "NCHW":
            x = tf.transpose(x, (0, 3, 1, 2))
        return x

    def _from_input_layout(self, t) -> np.ndarray:
        if self.layout == "NCHW":
            t = tf.transpose(t, (0, 2, 3, 1))
        return t.numpy()

    def _channels_last(self, t) -> np.ndarray:
        if self.layout == "NCHW" and len(t.shape) == 4:
            t = tf.transpose(t, (0, 2, 3, 1))
        return np.asarray(t, dtype=np.float32)

    @staticmethod
    def _targets(targets: Sequence[int]):
        return tf.convert_to_tensor(np.asarray(targets, dtype=np.int32))

    def _call(self, x, transform: str | None = None):
        transform = self._score_transform() if transform is None else transform
        if transform == "peel":
            features, last = self._logits_head
            out = features(x, training=False)
            if isinstance(last, keras.layers.Dense):  # Dense(activation="softmax"): its affine part is the logits
                out = keras.ops.matmul(out, last.kernel)
                if last.use_bias:
                    out = out + last.bias
        else:
            out = self.model(x, training=False)
        if isinstance(out, (list, tuple, dict)):
            raise ModelRejected("The model has several outputs; an image classifier returns one [batch, classes] tensor.")
        if transform == "softmax":
            out = tf.nn.softmax(out, axis=-1)
        return out

    def _find_softmax_head(self) -> bool:
        """A final Activation('softmax') / Softmax layer / Dense(activation='softmax') of a graph model."""
        try:
            last = self.model.layers[-1]
            outputs = self.model.outputs
        except (AttributeError, ValueError, IndexError):
            return False
        if not outputs or len(outputs) != 1:
            return False
        activation = getattr(last, "activation", None)
        name = getattr(activation, "__name__", "") if activation is not None else ""
        peelable = (
            isinstance(last, keras.layers.Softmax)
            or (isinstance(last, (keras.layers.Activation, keras.layers.Dense)) and name == "softmax")
        )
        if not peelable:
            return False
        try:
            features = keras.Model(self.model.inputs, last.input)
        except Exception:  # a subclassed model without a graph: keep its probabilities
            return False
        self._logits_head = (features, last)
        return True

    def _function(self, kind: str):
        """The compiled predict / input-gradient function for this view's score transform."""
        transform = self._score_transform()
        key = (kind, transform)
        fn = self._compiled.get(key)
        if fn is None:
            if kind == "predict":

                def graph(x):
                    return self._call(x, transform)

            else:

                def graph(x, targets):
                    with tf.GradientTape() as tape:
                        tape.watch(x)
                        out = self._call(x, transform)
                        selected = tf.reduce_sum(tf.gather(out, targets, axis=1, batch_dims=1))
                    return out, tape.gradient(selected, x)

            fn = self._compiled[key] = tf.function(graph, reduce_retracing=True)
        return fn

    def _get_layer(self, layer: str):
        try:
            return self._layers_by_path[layer]
        except KeyError:
            raise LayerError(f"No layer named {layer!r}; pick one from the layers table.") from None

    @contextlib.contextmanager
    def _capture(self, layers: dict[str, "keras.layers.Layer"], record):
        """Wrap the ``call`` of the given layers for one forward pass, then restore them."""
        with self.lock:
            saved = {}
            for path, layer in layers.items():
                saved[path] = layer.__dict__.get("call")
                original = layer.call

                def wrapped(*args, __path=path, __original=original, **kwargs):
                    output = __original(*args, **kwargs)
                    record(__path, output)
                    return output

                layer.call = wrapped
            try:
                yield
            finally:
                for path, layer in layers.items():
                    if saved[path] is None:
                        del layer.call
                    else:
                        layer.call = saved[path]

    # ------------------------------------------------------------------ primitives
    # The compiled functions run under the model's lock too: a first call with a new input shape
    # traces the model, and a trace taken while another thread has a layer's ``call`` wrapped
    # would capture that wrapper into the graph for good.
    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self.lock, tf.device(self._device):
            return np.asarray(self._function("predict")(self._to_tensor(batch)), dtype=np.float32)

    def input_gradients(self, batch, targets):
        with self.lock, tf.device(self._device):
            out, grad = self._function("gradients")(self._to_tensor(batch), self._targets(targets))
        return np.asarray(out, dtype=np.float32), self._from_input_layout(grad).astype(np.float32, copy=False)

    def layer_gradients(self, batch, layer, targets):
        captured = {}
        target_layer = self._get_layer(layer)
        form = self._grid_form(layer)
        x = self._to_tensor(batch)
        # The tape watches nothing but the layer's output: only the ops after the layer are recorded,
        # so the backward pass stops there instead of running through the whole network and its weights.
        tape = tf.GradientTape(watch_accessed_variables=False)

        def record(_path, out):
            if not isinstance(out, (list, tuple, dict)):
                tape.watch(out)
            captured["out"] = out

        with self._capture({layer: target_layer}, record):
            with tf.device(self._device), tape:
                out = self._call(x)
                selected = tf.reduce_sum(tf.gather(out, self._targets(targets), axis=1, batch_dims=1))
            act = captured.get("out")
            if act is None or isinstance(act, (list, tuple, dict)):
                raise LayerError(f"Layer {layer!r} did not produce a single tensor in the forward pass.")
            grad = tape.gradient(selected, act)
        if grad is None:
            raise LayerError(f"The model's output does not depend on layer {layer!r}.")
        return LayerPass(
            outputs=np.asarray(out, dtype=np.float32),
            activations=self._as_grid(act, form),
            gradients=self._as_grid(grad, form),
        )

    def layer_activations(self, batch, layer):
        captured = {}
        form = self._grid_form(layer)
        with self._capture({layer: self._get_layer(layer)}, lambda _p, out: captured.__setitem__("out", out)):
            with tf.device(self._device):
                out = self._call(self._to_tensor(batch))
        act = captured.get("out")
        if act is None or isinstance(act, (list, tuple, dict)):
            raise LayerError(f"Layer {layer!r} did not produce a single tensor in the forward pass.")
        return np.asarray(out, dtype=np.float32), self._as_grid(act, form)

    def _grid_form(self, layer: str) -> tuple:
        """("tokens", prefix, h, w) for a token layer, else ("raw",): how its output becomes [N, h, w, c]."""
        self.layers()
        return getattr(self, "_forms", {}).get(layer, ("raw",))

    def _as_grid(self, t, form: tuple) -> np.ndarray:
        if form[0] == "tokens" and len(t.shape) == 3:
            _, prefix, h, w = form
            arr = np.asarray(t, dtype=np.float32)[:, prefix:, :]
            return arr.reshape(arr.shape[0], h, w, arr.shape[2])
        return self._channels_last(t)

    def _trace_layers(self) -> list[LayerInfo]:
        records: dict[str, LayerInfo] = {}
        counter = [0]
        forms: dict[str, tuple] = {}
        resampled: list = []

        def record(path, output):
            if isinstance(output, (list, tuple, dict)) or not hasattr(output, "shape"):
                return
            kind = type(self._layers_by_path[path]).__name__
            shape = tuple(int(s) for s in output.shape[1:])
            prefix = None
            if len(output.shape) == 4 and self.layout == "NCHW":
                shape = (shape[1], shape[2], shape[0])
            elif len(output.shape) == 3 and int(output.shape[0]) == 1:
                grid = token_grid(shape, self.input_size)
                if grid is not None:
                    prefix, gh, gw = grid
                    shape = (gh, gw, shape[1])
                    forms[path] = ("tokens", prefix, gh, gw)
            resamples = only_resamples(kind) or any(output is seen for seen in resampled)
            if resamples:
                resampled.append(output)
            counter[0] += 1
            records[path] = LayerInfo(path, kind, shape, counter[0], resamples=resamples, prefix_tokens=prefix)

        with self._capture(self._layers_by_path, record), tf.device(self._device):
            self._call(self._to_tensor(self.test_input(1)))
        self._forms = forms
        return sorted(records.values(), key=lambda info: info.order)

    def randomisable_layers(self) -> tuple[str, ...]:
        # leaf layers that own weights (a nested model's weights belong to its layers), output side first
        return tuple(
            path for path, layer in reversed(list(self._layers_by_path.items())) if not isinstance(layer, keras.Model) and layer.weights
        )

    def randomised_copy(self, layers_from_top: int, seed: int) -> "KerasAdapter":
        """A clone of the model (``keras.models.clone_model`` + the weights) with the top layers' weights
        shuffled: every weight array's entries permuted by ``np.random.RandomState(seed + 1)``.

        Shuffling keeps each layer's weight distribution and destroys what training put where. (Quantus
        0.6 permutes only the first axis of Keras weights, which leaves a convolution's channels intact.)
        """
        names = self._check_randomised_count(layers_from_top)
        with self.lock:
            try:
                clone = keras.models.clone_model(self.model)
            except Exception as exc:  # subclassed models cannot be cloned from their config
                raise LayerError(
                    f"This Keras model cannot be cloned ({type(exc).__name__}), so it cannot be randomised; "
                    "save it as a functional or Sequential model."
                ) from exc
            clone.set_weights(self.model.get_weights())
        layers = dict(_walk(clone))
        for path in names:
            rng = np.random.RandomState(seed + 1)
            layer = layers[path]
            layer.set_weights([rng.permutation(w.ravel()).reshape(w.shape) for w in layer.get_weights()])
        twin = copy.copy(self)  # same preset, labels, layer table and validated output kind
        twin.model = clone
        twin._layers_by_path = layers
        twin.lock = threading.RLock()
        twin._compiled = {}  # its own compiled functions: the original's trace the original model
        if self._logits_head is not None:
            twin._logits_head = None
            twin._find_softmax_head()  # the clone's own features model and final layer
        twin.fingerprint = f"{self.fingerprint}|randomised:{len(names)}:{seed}"
        return twin

    # ------------------------------------------------------------------ inspection: every layer at once
    def _moments_kwargs(self, output) -> dict:
        """Reduce one layer output [N, ...] in TensorFlow; only [N, C] arrays go to the host.

        The usual case (everything finite) takes per-channel sums, sums of squares, minima and maxima
        and a count of non-zeros; NaN/Inf counts and finite-only statistics are computed only when the
        sums show something not finite.
        """
        t = output if output.dtype == tf.float32 else tf.cast(output, tf.float32)
        n = int(t.shape[0])
        if len(t.shape) == 1:
            v = tf.reshape(t, (n, 1, 1))
        else:
            if len(t.shape) == 4 and self.layout == "NCHW":
                t = tf.transpose(t, (0, 2, 3, 1))
            v = tf.reshape(t, (n, -1, int(t.shape[-1])))  # [N, positions, channels]
        sums = tf.stack([
            tf.reduce_sum(v, axis=1), tf.reduce_sum(tf.square(v), axis=1), tf.reduce_min(v, axis=1), tf.reduce_max(v, axis=1)
        ])
        host = sums.numpy().astype(np.float64)
        if np.all(np.isfinite(host)):
            size = int(np.prod(t.shape))
            return dict(
                sums=(host[0], host[1], int(v.shape[1])), zeros=size - int(tf.math.count_nonzero(t)),
                nan=np.zeros(n, dtype=np.int64), inf=np.zeros(n, dtype=np.int64), cmin=host[2], cmax=host[3],
                exact=lambda: (tf.math.reduce_std(tf.cast(t, tf.float64)), tf.reduce_mean(tf.cast(t, tf.float64))),
            )
        mask = tf.math.is_finite(v)
        count = int(tf.math.count_nonzero(mask))
        values = tf.where(mask, tf.cast(v, tf.float64), tf.zeros((), tf.float64))
        per_channel = tf.math.count_nonzero(mask, axis=1, dtype=tf.float64)
        cmax = tf.reduce_max(tf.where(mask, v, -np.inf), axis=1)
        cmin = tf.reduce_min(tf.where(mask, v, np.inf), axis=1)
        mean = std = None
        if count:
            mean = float(tf.reduce_sum(values)) / count
            std = float(tf.sqrt(tf.reduce_sum(tf.where(mask, (values - mean) ** 2, 0.0)) / count))
        flat = tf.reshape(v, (n, -1))
        return dict(
            finite=count, mean=mean, std=std, zeros=int(tf.math.count_nonzero(tf.equal(v, 0.0))),
            minimum=float(tf.reduce_min(cmin)) if count else None, maximum=float(tf.reduce_max(cmax)) if count else None,
            nan=tf.math.count_nonzero(tf.math.is_nan(flat), axis=1).numpy(),
            inf=tf.math.count_nonzero(tf.math.is_inf(flat), axis=1).numpy(),
            channel_mean=(tf.reduce_sum(values, axis=1) / tf.maximum(per_channel, 1.0)).numpy(),
            cmin=tf.where(per_channel > 0, cmin, 0.0).numpy(), cmax=tf.where(per_channel > 0, cmax, 0.0).numpy(),
        )

    def layer_statistics(self, batch, targets=None, *, gradients=True):
        self._ensure_validated()  # validation's own forward pass must not run through this call's hooks
        if gradients:
            fast = self._compiled_statistics(batch, targets)
            if fast is not None:
                return fast
        return self._eager_statistics(batch, targets, gradients=gradients)

    def _statistics_graph(self, x, targets):
        """Traced once per input signature with every layer's ``call`` wrapped (so the wrappers see the
        symbolic outputs); the graph it leaves holds only the reductions, run without Python."""
        recorded = []
        tape = tf.GradientTape(watch_accessed_variables=False)

        def record(path, output):
            if isinstance(output, (list, tuple, dict)) or not hasattr(output, "shape") or len(output.shape) == 0:
                return
            if not output.dtype.is_floating or any(d == 0 for d in output.shape[1:]):
                return
            tape.watch(output)
            recorded.append((path, output))

        self._recorder = record
        with tape:
            out = self._call(x)
            chosen = tf.where(targets < 0, tf.argmax(out, axis=1, output_type=tf.int32), targets)
            selected = tf.reduce_sum(tf.gather(out, chosen, axis=1, batch_dims=1))
        grads = tape.gradient(selected, [t for _, t in recorded], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        meta, values = [], []
        n = tf.shape(x)[0]
        for (path, t), g in zip(recorded, grads):
            t32 = tf.cast(t, tf.float32)
            if len(t.shape) == 4 and self.layout == "NCHW":
                t32 = tf.transpose(t32, (0, 2, 3, 1))
            channels = int(t32.shape[-1]) if len(t.shape) > 1 else 1
            v = tf.reshape(t32, (n, -1, channels))
            sums = tf.stack([tf.reduce_sum(v, axis=1), tf.reduce_sum(tf.square(v), axis=1), tf.reduce_min(v, axis=1), tf.reduce_max(v, axis=1)])
            norm = tf.norm(tf.reshape(tf.cast(g, tf.float32), (n, -1)), axis=1)
            shape = tuple(int(d) for d in t.shape[1:])
            if len(t.shape) == 4 and self.layout == "NCHW":
                shape = (shape[1], shape[2], shape[0])
            meta.append((path, shape))
            values.append((sums, tf.math.count_nonzero(t32), norm))
        self._statistics_meta = meta
        return out, chosen, values

    def _compiled_statistics(self, batch, targets):
        """The statistics pass as one compiled function; None when a layer's output is not finite or its
        variance from sums would cancel: then the eager pass counts NaN/Inf and recomputes exactly."""
        cached = getattr(self, "_statistics_fn", None)  # (owner, function): a view (copy.copy) makes its own
        if cached is None or cached[0]() is not self:
            cached = self._statistics_fn = (weakref.ref(self), tf.function(self._statistics_graph, reduce_retracing=True))
        given = np.full(len(batch), -1, np.int32) if targets is None else np.asarray(targets, np.int32)
        with self._capture(self._layers_by_path, lambda path, out: self._recorder(path, out)), tf.device(self._device):
            out, chosen, values = cached[1](self._to_tensor(batch), tf.convert_to_tensor(given))
        found = {}
        for (path, shape), (sums, nonzero, norm) in zip(self._statistics_meta, values):
            host = sums.numpy().astype(np.float64)
            if not np.all(np.isfinite(host)):
                return None
            total, squares = host[0], host[1]
            positions = int(np.prod(shape)) // max(1, host.shape[-1])
            size = total.size * positions
            mean, mean_square = total.sum() / size, squares.sum() / size
            if mean_square > CANCELLATION * max(mean_square - mean * mean, 0.0):  # variance from sums would cancel
                return None
            none = np.zeros(len(batch), dtype=np.int64)
            values_ = finish_moments(
                shape, sums=(total, squares, positions), zeros=size - int(nonzero), nan=none, inf=none, cmin=host[2], cmax=host[3]
            )
            found.pop(path, None)  # a layer called twice: its last call counts, in its place
            found[path] = (values_, norm.numpy().astype(np.float64))
        layers = tuple(moments(path, grad_norm=norm, **values_) for path, (values_, norm) in found.items())
        return StatisticsPass(outputs=np.asarray(out, dtype=np.float32), targets=np.asarray(chosen, dtype=np.int64), layers=layers)

    def _eager_statistics(self, batch, targets=None, *, gradients=True):
        found: dict[str, dict] = {}
        kept: dict[str, object] = {}
        tape = tf.GradientTape(watch_accessed_variables=False)

        def record(path, output):
            if isinstance(output, (list, tuple, dict)) or not hasattr(output, "shape") or len(output.shape) == 0:
                return
            if int(np.prod(output.shape)) == 0:
                return
            shape = tuple(int(s) for s in output.shape[1:])
            if len(output.shape) == 4 and self.layout == "NCHW":
                shape = (shape[1], shape[2], shape[0])
            with tape.stop_recording():
                values = finish_moments(shape, **self._moments_kwargs(output))
            found.pop(path, None)  # a layer called twice: its last call counts, in its place
            found[path] = values
            if gradients and output.dtype.is_floating:
                tape.watch(output)
                kept[path] = output

        with self._capture(self._layers_by_path, record), tf.device(self._device):
            with tape:
                out = self._call(self._to_tensor(batch))
                if targets is None:
                    targets = np.asarray(tf.argmax(out, axis=1))
                selected = tf.reduce_sum(tf.gather(out, self._targets(targets), axis=1, batch_dims=1))
            norms = {}
            if gradients and kept:
                names = list(kept)
                grads = tape.gradient(selected, [kept[k] for k in names], unconnected_gradients=tf.UnconnectedGradients.ZERO)
                n = len(batch)
                norms = {
                    k: tf.norm(tf.reshape(tf.cast(g, tf.float64), (n, -1)), axis=1).numpy() for k, g in zip(names, grads)
                }
        layers = []
        for name, values in found.items():
            grad = norms.get(name, np.zeros(len(batch))) if gradients else None
            layers.append(moments(name, grad_norm=grad, **values))
        return StatisticsPass(
            outputs=np.asarray(out, dtype=np.float32), targets=np.asarray(targets, dtype=np.int64), layers=tuple(layers)
        )

    def layer_weights(self, layer):
        target = self._get_layer(layer)
        if isinstance(target, keras.Model):
            return {}  # a nested model's weights belong to its own layers
        weights = {}
        for w in target.weights:
            name = w.name if w.name not in weights else f"{w.name}_{len(weights)}"
            weights[name] = np.asarray(w.numpy(), dtype=np.float32)
        return weights

    def layer_graph(self):
        self._ensure_validated()  # validation's own forward pass must not run through this call's hooks
        nodes = [GraphNode("input", "Input", False, 0)]
        edges = []
        known = {}
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                known[layer.name] = "input"
                continue
            known[layer.name] = layer.name
            nodes.append(GraphNode(layer.name, type(layer).__name__, True, int(layer.count_params()) if layer.built else 0))
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            for node in getattr(layer, "_inbound_nodes", []):
                for parent in node.parent_nodes:
                    source = known.get(parent.operation.name)
                    if source is not None and (source, layer.name) not in edges:
                        edges.append((source, layer.name))
        if not edges:
            return super().layer_graph()
        nodes.append(GraphNode("output", "Output", False, 0))
        for tensor in self.model.outputs:
            history = getattr(tensor, "_keras_history", None)
            if history is not None and history.operation.name in known:
                edges.append((known[history.operation.name], "output"))
        return LayerGraph(tuple(nodes), tuple(edges), traced=True)

    def parameter_count(self) -> int:
        return int(self.model.count_params())

    @property
    def device(self) -> str:
        if self._device.startswith("/GPU"):
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return f"{self._device[1:].lower()} ({details.get('device_name', 'GPU')})"
        return "cpu"

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, tf.errors.ResourceExhaustedError)

    def free_memory(self) -> None:
        # clear_session() would drop the model's own graph; collecting dead tensors is what is safe here
        gc.collect()
