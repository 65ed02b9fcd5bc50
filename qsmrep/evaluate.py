"""Test-set evaluation of checkpoints and classical baselines into metric tables.

The test maps are split ``"test"`` of the generator (disjoint seeds from train and validation),
full maps, metrics inside each map's mask with the QSM challenge 2.0 conventions
(:mod:`qsmrep.metrics`). One row per (model, checkpoint epoch, test map).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from qsmrep import io
from qsmrep.config import Config
from qsmrep.data import SyntheticMaps
from qsmrep.metrics import METRICS, compute_metrics, summarize
from qsmrep.physics import DipolePhysics
from qsmrep.runfolder import load_checkpoint, load_model_state
from qsmrep.runtime import autocast, resolve_device, to_memory_format
from qsmrep.unet import UNet3D

#: classical inversions beside the networks, each with the config's geometry
BASELINES = {
    "TKD": lambda field, physics: physics.tkd(field, threshold=0.19),
    "Tikhonov": lambda field, physics: physics.tikhonov(field, alpha=0.05),
}


def load_model(path: str | Path, device: torch.device | str = "cpu", expect: Config | None = None) -> tuple[UNet3D, Config, int]:
    """Model, its config and epoch from a checkpoint; ValueError if it does not match ``expect``'s architecture."""
    ckpt = load_checkpoint(path, map_location=device)
    config = Config.from_dict(ckpt["config"])
    if expect is not None and expect.model_kwargs() != config.model_kwargs():
        raise ValueError(f"checkpoint: {path} holds {config.model_kwargs()}, expected {expect.model_kwargs()}")
    model = to_memory_format(UNet3D(**config.model_kwargs()).to(device), config.memory_format)
    load_model_state(model, ckpt["model"], str(path))
    model.eval()
    return model, config, int(ckpt["epoch"])


@torch.inference_mode()
def predict(model: UNet3D, field: torch.Tensor, device: torch.device | str = "cpu", precision: str = "fp32",
            memory_format: str = "contiguous") -> torch.Tensor:
    """χ̂ of one field map (X, Y, Z) → (X, Y, Z) float32 on the CPU, in the precision the model was trained in."""
    device = torch.device(device)
    with autocast(device, precision):
        pred = model(to_memory_format(field.reshape(1, 1, *field.shape[-3:]).to(device), memory_format))
    return pred.float()[0, 0].cpu()


def load_test_maps(config: Config, n: int | None = None) -> SyntheticMaps:
    """The test split of ``config``'s generator and geometry (``n`` maps, default ``config.n_test``), on the CPU."""
    return SyntheticMaps.from_config(config, "test", device="cpu", cache=True, n=n)


def inference_precision(config: Config, device: torch.device) -> str:
    """The checkpoint's precision where ``device`` runs it natively, else fp32 (a bf16 model evaluated on a
    CPU without native bf16 would be emulated about 50× slower)."""
    from qsmrep.runtime import native_bf16

    return config.precision if config.precision != "bf16" or native_bf16(device) else "fp32"


def evaluate_checkpoint(path: str | Path, n_test: int | None = None, device: str = "auto",
                        keep_arrays: int = 1) -> tuple[pd.DataFrame, dict]:
    """Evaluate one checkpoint on the test maps.

    Returns ``(table, arrays)``: one row per map with columns model, activation, channels, epoch,
    map and the metrics of :data:`qsmrep.metrics.METRICS`; ``arrays`` holds the predictions of the
    first ``keep_arrays`` maps as numpy (X, Y, Z) under ``pred_<map>``.
    """
    dev = resolve_device(device)
    model, config, epoch = load_model(path, dev)
    rows, arrays = [], {}
    maps = load_test_maps(config, n_test)
    precision = inference_precision(config, dev)
    for index in range(len(maps)):
        sample = maps[index]
        pred = predict(model, sample["field"][0], dev, precision, config.memory_format)
        rows.append({"model": config.variant, "arm": config.arm, "activation": config.activation,
                     "channels": config.initial_channels, "seed": config.seed, "epoch": epoch, "map": index,
                     **compute_metrics(pred.numpy(), sample["chi"][0].numpy(), sample["mask"][0].numpy())})
        if index < keep_arrays:
            arrays[f"pred_{index}"] = pred.numpy()
    return pd.DataFrame(rows), arrays


def evaluate_baselines(config: Config, n_test: int | None = None, keep_arrays: int = 1) -> tuple[pd.DataFrame, dict]:
    """TKD (threshold 0.19) and Tikhonov (α = 0.05) on the same test maps, same table layout (epoch 0)."""
    rows, arrays = [], {}
    maps = load_test_maps(config, n_test)
    physics = DipolePhysics.from_config(config)
    for name, method in BASELINES.items():
        for index in range(len(maps)):
            sample = maps[index]
            pred = method(sample["field"][0], physics).float()
            rows.append({"model": name, "arm": "", "activation": "", "channels": 0, "seed": 0, "epoch": 0, "map": index,
                         **compute_metrics(pred.numpy(), sample["chi"][0].numpy(), sample["mask"][0].numpy())})
            if index < keep_arrays:
                arrays[f"{name}_pred_{index}"] = pred.numpy()
    return pd.DataFrame(rows), arrays


def evaluate_phantom(checkpoints: dict[str, str | Path], config: Config, device: str = "auto") -> tuple[pd.DataFrame, dict]:
    """Every checkpoint and baseline on the head phantom (:mod:`qsmrep.phantom`) at the profile's map size.

    An out-of-distribution check: anatomy-like shapes and ppm values unlike the random training shapes.
    Returns the metric table (one row per model and epoch) and the phantom with every prediction.
    """
    from qsmrep.phantom import head_phantom

    dev = resolve_device(device)
    physics = DipolePhysics.from_config(config)
    phantom = head_phantom(config.map_size, physics)
    chi, field, mask = phantom["chi"].numpy(), phantom["field"], phantom["mask"].numpy()
    rows, arrays = [], {"phantom/chi": chi, "phantom/field": field.numpy(), "phantom/mask": mask}
    predictions = {}
    for label, path in checkpoints.items():
        model, cfg, epoch = load_model(path, dev)
        predictions[label] = (cfg.variant, cfg.arm, cfg.activation, cfg.initial_channels, cfg.seed, epoch,
                              predict(model, field, dev, inference_precision(cfg, dev), cfg.memory_format).numpy())
    for name, method in BASELINES.items():
        predictions[name] = (name, "", "", 0, 0, 0, method(field, physics).float().numpy())
    for label, (model_name, arm, activation, channels, seed, epoch, pred) in predictions.items():
        rows.append({"label": label, "model": model_name, "arm": arm, "activation": activation, "channels": channels,
                     "seed": seed, "epoch": epoch, **compute_metrics(pred, chi, mask)})
        arrays[f"phantom/{label}"] = pred
    return pd.DataFrame(rows), arrays


def ground_truth_arrays(config: Config, n: int = 1) -> dict:
    """χ, field and mask of the first ``n`` test maps as numpy arrays."""
    maps = load_test_maps(config, n)
    out = {}
    for index in range(n):
        sample = maps[index]
        out.update({f"chi_{index}": sample["chi"][0].numpy(), f"field_{index}": sample["field"][0].numpy(),
                    f"mask_{index}": sample["mask"][0].numpy()})
    return out


def check_same_data(checkpoints: dict[str, str | Path], config: Config) -> None:
    """ValueError naming the first checkpoint whose training data (:meth:`Config.data_identity`) differs from ``config``'s."""
    want = config.data_identity()
    for label, path in checkpoints.items():
        have = Config.from_dict(load_checkpoint(path)["config"]).data_identity()
        differing = [k for k in want if have[k] != want[k] and k != "n_test"]
        if differing:
            k = differing[0]
            raise ValueError(f"evaluate: checkpoint {label} ({path}) was trained on other data than the test maps "
                             f"({k}: {have[k]!r} there, {want[k]!r} here); evaluate it separately")


def evaluate_runs(checkpoints: dict[str, str | Path], out: str | Path, config: Config, device: str = "auto",
                  keep_arrays: int = 1, baselines: bool = True) -> pd.DataFrame:
    """Evaluate several checkpoints (label → path) plus baselines; write the tables and arrays to ``out``.

    Every checkpoint must have been trained on the same data as ``config`` (:meth:`Config.data_identity`:
    map size, generator, geometry, seeds), since all are scored against ``config``'s test maps;
    ValueError otherwise. Files: ``metrics_per_map.csv`` (one row per model, epoch and map),
    ``metrics_summary.csv`` (mean and sd over test maps and seeds, per arm, model and epoch), ``metrics_phantom.csv`` (every model
    on the head phantom) and ``arrays.npz`` (ground truth and predictions of the first ``keep_arrays``
    test maps, keys ``<label>/pred_<map>``, and the phantom, keys ``phantom/…``).
    """
    check_same_data(checkpoints, config)
    out = io.check_writable_dir(out)
    tables, arrays = [], ground_truth_arrays(config, keep_arrays)
    for label, path in checkpoints.items():
        table, preds = evaluate_checkpoint(path, config.n_test, device, keep_arrays)
        tables.append(table.assign(label=label))
        arrays.update({f"{label}/{key}": value for key, value in preds.items()})
    if baselines:
        table, preds = evaluate_baselines(config, config.n_test, keep_arrays)
        tables.append(table.assign(label=table["model"]))
        arrays.update({f"{key.split('_pred_')[0]}/pred_{key.split('_pred_')[1]}": v for key, v in preds.items()})
    per_map = pd.concat(tables, ignore_index=True)
    summary = summarize(per_map, by=["arm", "model", "activation", "channels", "epoch"], metrics=list(METRICS))
    io.write_text(out / "metrics_per_map.csv", per_map.to_csv(index=False))
    io.write_text(out / "metrics_summary.csv", summary.to_csv(index=False))
    phantom_table, phantom_arrays = evaluate_phantom(checkpoints, config, device)
    io.write_text(out / "metrics_phantom.csv", phantom_table.to_csv(index=False))
    arrays.update(phantom_arrays)
    io.save_npz(out / "arrays.npz", **arrays)
    return per_map


def crop_check(path: str | Path, n_maps: int = 4, device: str = "auto") -> dict:
    """Mean validation NRMSE of a checkpoint on full maps and on centre crops of its training patch size.

    A diagnostic for runs whose validation blew up while training stayed finite: a network that is fine on
    patch-sized inputs but not on full maps learned something that depends on the input's extent (at the
    ``cpu`` profile a 32³ patch reaches the 5-level U-Net's bottleneck as 2³, a 64³ map as 4³)."""
    from qsmrep.metrics import nrmse

    dev = resolve_device(device)
    model, config, epoch = load_model(path, dev)
    maps = SyntheticMaps.from_config(config, "val", device="cpu", cache=True, n=min(n_maps, config.n_val))
    precision = inference_precision(config, dev)
    lo = (config.map_size - config.patch_size) // 2
    window = (slice(lo, lo + config.patch_size),) * 3
    full, crop = [], []
    for index in range(len(maps)):
        sample = maps[index]
        chi, mask = sample["chi"][0], sample["mask"][0]
        full.append(nrmse(predict(model, sample["field"][0], dev, precision, config.memory_format), chi, mask))
        crop.append(nrmse(predict(model, sample["field"][0][window], dev, precision, config.memory_format),
                          chi[window], mask[window]))
    return {"arm": config.arm, "activation": config.activation, "channels": config.initial_channels, "seed": config.seed,
            "epoch": epoch, "maps": len(maps), "val_nrmse_full_maps": sum(full) / len(full),
            f"val_nrmse_centre_crops_{config.patch_size}": sum(crop) / len(crop)}
