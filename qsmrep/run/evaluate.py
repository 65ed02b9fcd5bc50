"""Test-set evaluation of checkpoints and classical baselines into metric tables.

The test maps are split ``"test"`` of the generator (disjoint seeds from train and validation),
full maps, metrics inside each map's mask with the QSM challenge 2.0 conventions
(:mod:`qsmrep.core.metrics`). One row per (model, checkpoint epoch, test map). Each checkpoint is
loaded once and scored on the test maps (rendered once) and on the head phantom in the same pass.

Everything runs on the evaluation device: the test maps are rendered and kept there, predictions stay
there, and on a GPU the metrics are their torch versions (:mod:`qsmrep.core.metrics_torch`, equal to the
numpy ones to round-off), read back once per model and test set. On a CPU the numpy metrics are the
device's own, and faster there (scipy's filters in C: about 2× with one thread and 4× on two busy cores
against the torch ones at 64³, measured), so they are used unless :data:`TORCH_METRICS_ON_CPU`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from qsmrep.core.metrics import METRICS, compute_metrics, summarize
from qsmrep.core.metrics_torch import METRICS_TORCH, compute_metrics_torch
from qsmrep.core.phantom import head_phantom
from qsmrep.core.physics import DipolePhysics
from qsmrep.core.unet import UNet3D
from qsmrep.run import baselines as classical
from qsmrep.run import files, scores
from qsmrep.run.config import Config
from qsmrep.run.data import SyntheticMaps
from qsmrep.run.noise import TEST_SNR, NoisyMaps
from qsmrep.run.runfolder import load_checkpoint, load_model_state
from qsmrep.run.runtime import autocast, native_bf16, resolve_device, to_memory_format

#: score on a CPU with the torch metrics too (the GPU's path; slower there than the numpy ones)
TORCH_METRICS_ON_CPU = False
Invert = Callable[[torch.Tensor], torch.Tensor | np.ndarray]  # field (X, Y, Z) → χ̂ (X, Y, Z), on the field's device


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, on its device), its config, epoch and dead-unit census."""

    model: UNet3D
    config: Config
    epoch: int
    dead_per_layer: dict  # layer → fraction of channels never positive on validation map 0
    zero_gradient_per_layer: dict  # layer → fraction dead by the slope criterion (empty for older runs)

    def labels(self) -> dict:
        """The columns naming this model in the metric tables."""
        c = self.config
        return {"model": c.variant, "arm": c.arm, "activation": c.activation, "channels": c.initial_channels,
                "seed": c.seed, "epoch": self.epoch}

    def inverter(self, device: torch.device) -> Invert:
        precision = inference_precision(self.config, device)
        return lambda field: infer(self.model, field, device, precision, self.config.memory_format)


def load(path: str | Path, device: torch.device | str = "cpu", expect: Config | None = None) -> Checkpoint:
    """The checkpoint at ``path``; ValueError if it does not match ``expect``'s architecture."""
    ckpt = load_checkpoint(path, map_location=device)
    config = Config.from_dict(ckpt["config"])
    if expect is not None and expect.model_kwargs() != config.model_kwargs():
        raise ValueError(f"checkpoint: {path} holds {config.model_kwargs()}, expected {expect.model_kwargs()}")
    model = to_memory_format(UNet3D(**config.model_kwargs()).to(device), config.memory_format)
    load_model_state(model, ckpt["model"], str(path))
    model.eval()
    return Checkpoint(model, config, int(ckpt["epoch"]), dict(ckpt.get("dead_per_layer", {})),
                      dict(ckpt.get("zero_gradient_per_layer", {})))


def load_model(path: str | Path, device: torch.device | str = "cpu", expect: Config | None = None) -> tuple[UNet3D, Config, int]:
    """Model, its config and epoch from a checkpoint (see :func:`load`)."""
    checkpoint = load(path, device, expect)
    return checkpoint.model, checkpoint.config, checkpoint.epoch


@torch.inference_mode()
def infer(model: UNet3D, field: torch.Tensor, device: torch.device | str = "cpu", precision: str = "fp32",
          memory_format: str = "contiguous") -> torch.Tensor:
    """χ̂ of one field map (X, Y, Z) → (X, Y, Z) float32 on ``device``, in the precision the model was trained in."""
    device = torch.device(device)
    with autocast(device, precision):
        pred = model(to_memory_format(field.reshape(1, 1, *field.shape[-3:]).to(device), memory_format))
    return pred.float()[0, 0]


def predict(model: UNet3D, field: torch.Tensor, device: torch.device | str = "cpu", precision: str = "fp32",
            memory_format: str = "contiguous") -> torch.Tensor:
    """:func:`infer`, returned on the CPU."""
    return infer(model, field, device, precision, memory_format).cpu()


def load_test_maps(config: Config, n: int | None = None, device: torch.device | str = "cpu") -> SyntheticMaps:
    """The test split of ``config``'s generator and geometry (``n`` maps, default ``config.n_test``), rendered and
    kept on ``device``."""
    return SyntheticMaps.from_config(config, "test", device=device, cache=True, n=n)


def inference_precision(config: Config, device: torch.device) -> str:
    """The checkpoint's precision where ``device`` runs it natively, else fp32 (a bf16 model evaluated on a
    CPU without native bf16 would be emulated about 50× slower)."""
    return config.precision if config.precision != "bf16" or native_bf16(device) else "fp32"


def score_map(pred, chi: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The metrics of :data:`qsmrep.core.metrics.METRICS` of one prediction (tensor or array, (X, Y, Z)) against
    ``chi`` and ``mask``, on their device: a (len(METRICS),) float64 tensor, not read back (module docstring)."""
    pred = torch.as_tensor(pred, device=chi.device).float()
    if chi.device.type == "cpu" and not TORCH_METRICS_ON_CPU:
        return torch.tensor(list(compute_metrics(pred, chi, mask).values()), dtype=torch.float64)
    return compute_metrics_torch(pred, chi, mask, list(METRICS))


def score_maps(labels: dict, invert: Invert, maps, keep_arrays: int = 0) -> tuple[list[dict], dict]:
    """Rows ``{**labels, "map": i, **metrics}`` for every map, and the predictions of the first ``keep_arrays``
    maps as numpy (X, Y, Z) under ``pred_<map>``. Maps, predictions and metrics stay on the maps' device until
    the table is read back, with one copy."""
    values, preds = [], {}
    for index in range(len(maps)):
        sample = maps[index]
        pred = invert(sample["field"][0])
        values.append(score_map(pred, sample["chi"][0], sample["mask"][0]))
        if index < keep_arrays:
            preds[f"pred_{index}"] = pred
    table = torch.stack(values).tolist() if values else []
    rows = [{**labels, "map": index, **dict(zip(METRICS, row))} for index, row in enumerate(table)]
    return rows, {key: _to_numpy(pred) for key, pred in preds.items()}


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def evaluate_checkpoint(path: str | Path, n_test: int | None = None, device: str = "auto",
                        keep_arrays: int = 1) -> tuple[pd.DataFrame, dict]:
    """One checkpoint on its test maps: ``(table, arrays)`` as :func:`score_maps` gives them (columns model,
    arm, activation, channels, seed, epoch, map and the metrics of :data:`qsmrep.core.metrics.METRICS`)."""
    dev = resolve_device(device)
    checkpoint = load(path, dev)
    maps = load_test_maps(checkpoint.config, n_test, dev)
    rows, arrays = score_maps(checkpoint.labels(), checkpoint.inverter(dev), maps, keep_arrays)
    return pd.DataFrame(rows), arrays


def check_same_data(label: str, path, have: Config, want: Config) -> None:
    """ValueError when checkpoint ``label``'s training data (:meth:`Config.data_identity`) differ from ``want``'s."""
    have, want = have.data_identity(), want.data_identity()
    differing = [k for k in want if have[k] != want[k] and k != "n_test"]
    if differing:
        k = differing[0]
        raise ValueError(f"evaluate: checkpoint {label} ({path}) was trained on other data than the test maps "
                         f"({k}: {have[k]!r} there, {want[k]!r} here); evaluate it separately")


def _truth_arrays(maps, n: int, phantom: dict) -> dict:
    out = {f"phantom/{key}": _to_numpy(phantom[key]) for key in ("chi", "field", "mask")}
    for index in range(min(n, len(maps))):
        sample = maps[index]
        out.update({f"{key}_{index}": _to_numpy(sample[key][0]) for key in ("chi", "field", "mask")})
    return out


def _dead_unit_rows(checkpoint: Checkpoint) -> list[dict]:
    labels = {k: v for k, v in checkpoint.labels().items() if k != "model"}
    slope = checkpoint.zero_gradient_per_layer
    return [{**labels, "layer": layer, "dead_fraction": fraction, "zero_gradient_fraction": slope.get(layer, float("nan"))}
            for layer, fraction in checkpoint.dead_per_layer.items()]


class _Tables:
    """The rows of one evaluation, gathered model by model: ``clean`` and ``noisy`` lists of frames, ``phantom`` and
    ``dead`` lists of rows."""

    def __init__(self):
        self.clean, self.noisy, self.phantom, self.dead = [], [], [], []

    def add(self, other: "_Tables") -> None:
        for name in scores.TABLES:
            getattr(self, name).extend(getattr(other, name))

    def rows(self) -> dict[str, list[dict]]:
        """Every table as a list of rows (the form of a scores record, :mod:`qsmrep.run.scores`)."""
        return {"clean": [r for f in self.clean for r in f.to_dict("records")],
                "noisy": [r for f in self.noisy for r in f.to_dict("records")],
                "phantom": list(self.phantom), "dead": list(self.dead)}

    @classmethod
    def from_rows(cls, rows: dict[str, list[dict]]) -> "_Tables":
        tables = cls()
        tables.clean = [pd.DataFrame(rows["clean"])] if rows.get("clean") else []
        tables.noisy = [pd.DataFrame(rows["noisy"])] if rows.get("noisy") else []
        tables.phantom, tables.dead = list(rows.get("phantom", [])), list(rows.get("dead", []))
        return tables


@dataclass
class _TestSets:
    """What every checkpoint of one evaluation is scored on, on the evaluation device."""

    maps: SyntheticMaps
    noisy: NoisyMaps | None
    phantom: dict
    physics: DipolePhysics
    evaluation: dict  # :func:`qsmrep.run.scores.identity`
    keep_arrays: int

    @classmethod
    def of(cls, config: Config, dev: torch.device, snr: float | None, keep_arrays: int) -> "_TestSets":
        maps, physics = load_test_maps(config, device=dev), DipolePhysics.from_config(config)
        phantom = {key: value.to(dev) for key, value in head_phantom(config.map_size, physics).items()}
        return cls(maps, NoisyMaps(maps, snr) if snr else None, phantom, physics,
                   scores.identity(config, snr, keep_arrays), keep_arrays)


def _checkpoint_scores(label: str, path: str | Path, config: Config, sets: _TestSets,
                       dev: torch.device) -> tuple["_Tables", dict]:
    """One checkpoint's tables and predictions: scored from its weights (and recorded beside it), or, for a scores
    record, read from it. ValueError when it was trained on other data than ``config``'s test maps."""
    if scores.is_record(path):
        kept, _, rows, preds = scores.load(path, sets.evaluation)
        check_same_data(label, path, kept, config)
        return _Tables.from_rows(rows), preds
    checkpoint = load(path, dev)
    check_same_data(label, path, checkpoint.config, config)
    part, preds = _Tables(), {}
    part.dead += _dead_unit_rows(checkpoint)
    invert = checkpoint.inverter(dev)
    _score(part, preds, label, checkpoint.labels(), invert, invert, sets.maps, sets.noisy, sets.phantom, sets.keep_arrays)
    scores.save(path, checkpoint.config, checkpoint.epoch, sets.evaluation, part.rows(), preds)
    return part, preds


def record_scores(checkpoints: dict[str, str | Path], config: Config, device: str = "auto", keep_arrays: int = 1,
                  snr: float | None = TEST_SNR) -> None:
    """Score checkpoints (label → ``epoch_EEE.pt``) as :func:`evaluate_runs` does with the same arguments and write
    only their scores records beside them (:mod:`qsmrep.run.scores`), no tables."""
    dev = resolve_device(device)
    sets = _TestSets.of(config, dev, snr, keep_arrays)
    for label, path in checkpoints.items():
        _checkpoint_scores(label, path, config, sets, dev)


def evaluate_runs(checkpoints: dict[str, str | Path], out: str | Path, config: Config, device: str = "auto",
                  keep_arrays: int = 1, baselines: bool = True, snr: float | None = TEST_SNR) -> pd.DataFrame:
    """Evaluate several checkpoints (label → path) plus tuned baselines; write the tables and arrays to ``out``.

    A path is a checkpoint (``epoch_EEE.pt``: scored, and its scores recorded beside it) or, for a run whose weights
    are gone, such a record (``scores_EEE.json``: its rows and predictions taken as recorded, :mod:`qsmrep.run.scores`).

    Every checkpoint must have been trained on the same data as ``config`` (:meth:`Config.data_identity`:
    map size, generator, geometry, seeds), since all are scored against ``config``'s test maps;
    ValueError otherwise, before any file is written. Files: ``metrics_per_map.csv`` (one row per model,
    epoch and map of the paper's noise-free test set), ``metrics_noisy.csv`` (the same on the test set with
    field noise of ``snr``, :mod:`qsmrep.run.noise`; not written when ``snr`` is None), ``metrics_summary.csv``
    (mean and sd over test maps and seeds, per arm, model and epoch, noise-free), ``baselines.csv`` (each
    baseline's parameter search on the validation maps, :mod:`qsmrep.run.baselines`; with ``baselines=False``
    the baselines are scored on the phantom only), ``metrics_phantom.csv``
    (every model and baseline on the head phantom), ``dead_units.csv`` (per checkpoint and activation layer, the
    dead-unit fractions recorded in training, :mod:`qsmrep.run.units`) and ``arrays.npz`` (ground truth and
    predictions of the first ``keep_arrays`` noise-free test maps, keys ``<label>/pred_<map>``, and the
    phantom, keys ``phantom/…``).
    """
    out, dev = files.check_writable_dir(out), resolve_device(device)
    sets = _TestSets.of(config, dev, snr, keep_arrays)
    maps, noisy, phantom, physics = sets.maps, sets.noisy, sets.phantom, sets.physics
    clean_params, search = classical.tune_for(config, physics)
    noisy_params, noisy_search = classical.tune_for(config, physics, snr) if snr else ({}, None)
    tables, arrays = _Tables(), _truth_arrays(maps, keep_arrays, phantom)
    for label, path in checkpoints.items():
        part, preds = _checkpoint_scores(label, path, config, sets, dev)
        tables.add(part)
        arrays.update(preds)
    for name, parameter in clean_params.items():
        clean = classical.inverter(name, physics, parameter)
        with_noise = classical.inverter(name, physics, noisy_params[name]) if snr else None
        _score(tables, arrays, name, classical.labels(name), clean, with_noise, maps if baselines else None,
               noisy if baselines else None, phantom, keep_arrays)
    return _write(out, tables, arrays, pd.concat([search, noisy_search], ignore_index=True))


def _score(tables: _Tables, arrays: dict, label: str, labels: dict, invert: Invert, invert_noisy: Invert | None,
           maps, noisy, phantom: dict, keep_arrays: int) -> None:
    """One model on the phantom, the noise-free test maps (when given) and the noisy ones (when given)."""
    pred = invert(phantom["field"])
    values = score_map(pred, phantom["chi"], phantom["mask"]).tolist()
    tables.phantom.append({"label": label, **labels, **dict(zip(METRICS, values))})
    arrays[f"phantom/{label}"] = _to_numpy(pred)
    if maps is not None:
        rows, preds = score_maps(labels, invert, maps, keep_arrays)
        tables.clean.append(pd.DataFrame(rows).assign(label=label))
        arrays.update({f"{label}/{key}": value for key, value in preds.items()})
    if noisy is not None and invert_noisy is not None:
        rows, _ = score_maps(labels, invert_noisy, noisy)
        tables.noisy.append(pd.DataFrame(rows).assign(label=label, test_set=noisy.label))


def _write(out: Path, tables: _Tables, arrays: dict, search: pd.DataFrame) -> pd.DataFrame:
    per_map = pd.concat(tables.clean, ignore_index=True)
    summary = summarize(per_map, by=["arm", "model", "activation", "channels", "epoch"], metrics=list(METRICS))
    files.write_text(out / "metrics_per_map.csv", per_map.to_csv(index=False))
    files.write_text(out / "metrics_summary.csv", summary.to_csv(index=False))
    if tables.noisy:
        files.write_text(out / "metrics_noisy.csv", pd.concat(tables.noisy, ignore_index=True).to_csv(index=False))
    files.write_text(out / "baselines.csv", search.to_csv(index=False))
    files.write_text(out / "metrics_phantom.csv", pd.DataFrame(tables.phantom).to_csv(index=False))
    dead_columns = ["arm", "activation", "channels", "seed", "epoch", "layer", "dead_fraction", "zero_gradient_fraction"]
    files.write_text(out / "dead_units.csv", pd.DataFrame(tables.dead, columns=dead_columns).to_csv(index=False))
    files.save_npz(out / "arrays.npz", **arrays)
    return per_map


def crop_check(path: str | Path, n_maps: int = 4, device: str = "auto") -> dict | None:
    """Mean validation NRMSE of a checkpoint on full maps and on centre crops of its training patch size; for a
    scores record (a run whose weights are gone, :mod:`qsmrep.run.scores`) the check it keeps, or None.

    A diagnostic for runs whose validation blew up while training stayed finite: a network that is fine on
    patch-sized inputs but not on full maps learned something that depends on the input's extent (at the
    ``cpu`` profile a 32³ patch reaches the 5-level U-Net's bottleneck as 2³, a 64³ map as 4³)."""
    if scores.is_record(path):
        return scores.crop_check(path)
    dev = resolve_device(device)
    checkpoint = load(path, dev)
    config, invert = checkpoint.config, checkpoint.inverter(dev)
    maps = SyntheticMaps.from_config(config, "val", device=dev, cache=True, n=min(n_maps, config.n_val))
    lo = (config.map_size - config.patch_size) // 2
    window = (slice(lo, lo + config.patch_size),) * 3
    errors = []  # (full map, centre crop) per map, on the device
    for index in range(len(maps)):
        sample = maps[index]
        field, chi, mask = sample["field"][0], sample["chi"][0], sample["mask"][0]
        errors.append(torch.stack([METRICS_TORCH["nrmse"](invert(field), chi, mask),
                                   METRICS_TORCH["nrmse"](invert(field[window]), chi[window], mask[window])]))
    full, crop = torch.stack(errors).mean(0).tolist()
    labels = {k: v for k, v in checkpoint.labels().items() if k != "model"}
    return {**labels, "maps": len(maps), "val_nrmse_full_maps": full, f"val_nrmse_centre_crops_{config.patch_size}": crop}
