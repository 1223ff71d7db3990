"""Build the zoo's shipped files: ``python -m model_zoo.train``.

* trains ``shapes-cnn`` in PyTorch on generated shapes, checks it on a held-out set
  drawn with another seed, and saves it as safetensors plus its converted Keras twin;
* saves ``resnet-mini`` with seeded random weights whose BatchNorm statistics are
  calibrated on shapes images (so activations are well scaled), in both frameworks;
* writes two samples per class with their masks to ``samples/`` and an ``index.json``;
* records accuracy, twin parity and timings in ``weights/metrics.json``.

Every random choice comes from the seeds below; a rerun on the same library versions
reproduces the files. The whole run takes a few minutes on two CPU cores.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from . import ARCHITECTURES, SAMPLES_DIR, WEIGHTS_DIR, build_keras, build_torch
from .shapes import CLASSES, generate

TRAIN_SEED, HELDOUT_SEED, SAMPLES_SEED, CALIBRATION_SEED = 1, 2, 3, 4
TORCH_SEED = 0
TRAIN_IMAGES = 16_000
HELDOUT_IMAGES = 3_000
EPOCHS = 12
BATCH = 128
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
MIN_ACCURACY = 0.95
SAMPLES_PER_CLASS = 2
THREADS = 2


def main() -> dict:
    import torch

    torch.set_num_threads(THREADS)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    SAMPLES_DIR.mkdir(exist_ok=True)
    metrics: dict = {"seeds": {"train": TRAIN_SEED, "heldout": HELDOUT_SEED, "samples": SAMPLES_SEED,
                               "calibration": CALIBRATION_SEED, "torch": TORCH_SEED},
                     "versions": {"torch": torch.__version__, "numpy": np.__version__}}

    metrics["load_average_at_start"] = round(os.getloadavg()[0], 2)
    start = time.perf_counter()
    train_images, train_labels, _ = generate(TRAIN_IMAGES, TRAIN_SEED)
    held_images, held_labels, _ = generate(HELDOUT_IMAGES, HELDOUT_SEED)
    metrics["data_seconds"] = round(time.perf_counter() - start, 1)
    print(f"generated {TRAIN_IMAGES} training and {HELDOUT_IMAGES} held-out images in {metrics['data_seconds']} s")

    start, cpu_start = time.perf_counter(), time.process_time()
    model = train_shapes_cnn(train_images, train_labels, held_images, held_labels)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    # Wall time depends on what else runs on the machine; CPU seconds (all threads) and
    # the load average at the start let a reader judge a slow run.
    metrics["train_cpu_seconds"] = round(time.process_time() - cpu_start, 1)

    predictions = predict_torch(model, held_images)
    accuracy = float((predictions == held_labels).mean())
    per_class = {name: float((predictions[held_labels == k] == k).mean()) for k, name in enumerate(CLASSES)}
    metrics["shapes_cnn"] = {
        "train_images": TRAIN_IMAGES, "heldout_images": HELDOUT_IMAGES, "epochs": EPOCHS, "batch": BATCH,
        "heldout_accuracy": round(accuracy, 4), "heldout_per_class": {k: round(v, 4) for k, v in per_class.items()},
    }
    print(f"shapes-cnn held-out accuracy {accuracy:.4f} ({metrics['train_seconds']} s of training)")
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"held-out accuracy {accuracy:.4f} is under {MIN_ACCURACY}; not saving")

    sample_images = write_samples()
    metrics["shapes_cnn"].update(save_twins("shapes-cnn", model, "shapes_cnn", sample_images))
    sample_labels = np.repeat(np.arange(len(CLASSES)), SAMPLES_PER_CLASS)
    sample_accuracy = float((predict_torch(model, sample_images) == sample_labels).mean())
    metrics["shapes_cnn"]["sample_accuracy"] = round(sample_accuracy, 4)

    start = time.perf_counter()
    resnet = resnet_mini_calibrated()
    probe = np.random.default_rng(CALIBRATION_SEED + 1).random((2, 224, 224, 3), dtype=np.float32)
    metrics["resnet_mini"] = save_twins("resnet-mini", resnet, "resnet_mini", probe)
    metrics["resnet_mini"]["seconds"] = round(time.perf_counter() - start, 1)

    metrics["weights_bytes"] = {p.name: p.stat().st_size for p in sorted(WEIGHTS_DIR.glob("*")) if p.suffix != ".json"}
    (WEIGHTS_DIR / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    return metrics


def train_shapes_cnn(images: np.ndarray, labels: np.ndarray, held_images: np.ndarray, held_labels: np.ndarray):
    """Train with BatchNorm after each conv, then fold it away.

    A plain CNN without normalisation sits at chance for many epochs on this data;
    with BatchNorm it converges in a few. Folding each BatchNorm into the conv before it
    (eval-mode statistics) gives back the plain ``shapes-cnn`` with the same outputs.
    """
    import torch
    import torch.nn.functional as F

    torch.manual_seed(TORCH_SEED)
    plain = build_torch("shapes-cnn")
    model = with_batch_norm(plain).train().to(memory_format=torch.channels_last)
    x_all = to_nchw(images)
    y_all = torch.from_numpy(labels)
    steps_per_epoch = len(images) // BATCH
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch, pct_start=0.15
    )
    shuffle = torch.Generator().manual_seed(TORCH_SEED)
    for epoch in range(EPOCHS):
        order = torch.randperm(len(images), generator=shuffle)
        total = 0.0
        for step in range(steps_per_epoch):
            index = order[step * BATCH:(step + 1) * BATCH]
            loss = F.cross_entropy(model(augment(x_all[index], shuffle)), y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item()
        accuracy = (predict_torch(model, held_images[:1000]) == held_labels[:1000]).mean()
        model.train()
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {total / steps_per_epoch:.4f}, held-out (first 1000) {accuracy:.4f}",
              flush=True)
    model.eval().to(memory_format=torch.contiguous_format)
    probe = to_nchw(held_images[:64]).contiguous()
    with torch.no_grad():
        before = model(probe)
        fold_batch_norm(model)
        after = plain.eval()(probe)
    drift = float((before - after).abs().max())
    if drift > 1e-4:
        raise RuntimeError(f"folding BatchNorm changed the outputs by {drift:.2e}")
    return plain


def with_batch_norm(plain):
    """The layers of ``plain`` (shared, not copied) with a BatchNorm after every conv."""
    from torch import nn

    layers = []
    for name, module in plain.named_children():
        layers.append(module)
        if isinstance(module, nn.Conv2d):
            layers.append(nn.BatchNorm2d(module.out_channels))
        if name == "gap":
            layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def fold_batch_norm(sequential) -> None:
    """Fold each eval-mode BatchNorm into the conv just before it, in place."""
    import torch
    from torch import nn

    modules = list(sequential)
    with torch.no_grad():
        for conv, norm in zip(modules, modules[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
                conv.weight.mul_(scale[:, None, None, None])
                conv.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)


def augment(x, generator):
    """The classes are invariant under the dihedral group: random flips and quarter turns."""
    import torch

    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    x = torch.rot90(x, k, dims=(2, 3))
    if flip % 2:
        x = torch.flip(x, dims=(3,))
    return x.contiguous(memory_format=torch.channels_last)


def to_nchw(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def predict_torch(model, images: np.ndarray, batch: int = 500) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model(to_nchw(images[i:i + batch])).argmax(1).numpy())
    return np.concatenate(out)


def resnet_mini_calibrated():
    """Seeded random init; BatchNorm running statistics set to the mean/variance over shapes images."""
    import torch

    torch.manual_seed(TORCH_SEED)
    model = build_torch("resnet-mini")
    images, _, _ = generate(64, CALIBRATION_SEED, size=224)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            model(to_nchw(images[i:i + 16]).contiguous())
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return model.eval()


def save_twins(architecture: str, model, stem: str, probe: np.ndarray) -> dict:
    """Save ``model`` as safetensors and its Keras twin as .keras; reload both and compare on ``probe``."""
    import keras
    import safetensors.torch
    import torch

    from .convert import torch_to_keras

    torch_path, keras_path = WEIGHTS_DIR / f"{stem}.safetensors", WEIGHTS_DIR / f"{stem}.keras"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(torch_path), metadata={"architecture": architecture})
    torch_to_keras(model, build_keras(architecture)).save(keras_path)

    reloaded = build_torch(architecture)
    reloaded.load_state_dict(safetensors.torch.load_file(str(torch_path)), strict=True)
    twin = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
    x = probe.astype(np.float32) / (255.0 if probe.dtype == np.uint8 else 1.0)
    with torch.no_grad():
        expected = reloaded(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
    actual = np.asarray(twin(x, training=False))
    diff = float(np.abs(expected - actual).max())
    print(f"{architecture}: torch/keras max |diff| {diff:.2e} over {len(x)} inputs of {ARCHITECTURES[architecture].input_size}")
    return {"parity_max_abs_diff": diff, "parameters": int(sum(p.numel() for p in model.parameters()))}


def write_samples() -> np.ndarray:
    """Two held-apart images per class (a seed of their own), as PNGs with masks and an index."""
    from PIL import Image

    images, labels, masks = generate(SAMPLES_PER_CLASS * len(CLASSES) * 4, SAMPLES_SEED)
    chosen, index = [], []
    for k, name in enumerate(CLASSES):
        for i, j in enumerate(np.flatnonzero(labels == k)[:SAMPLES_PER_CLASS]):
            stem = f"{name}_{i}"
            Image.fromarray(images[j]).save(SAMPLES_DIR / f"{stem}.png")
            Image.fromarray(masks[j].astype(np.uint8) * 255).save(SAMPLES_DIR / f"{stem}_mask.png")
            index.append({"name": stem, "label": k, "image": f"{stem}.png", "mask": f"{stem}_mask.png"})
            chosen.append(images[j])
    (SAMPLES_DIR / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    return np.stack(chosen)


if __name__ == "__main__":
    main()
