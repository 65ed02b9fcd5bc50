"""One typed configuration for a training/evaluation run, three named profiles, validation.

Profiles (see DESIGN.md):

* ``paper``: the paper exactly: 320³ maps, four 160³ patches per iteration, 1000/100 train/val
  maps, 100 epochs of 250 iterations, AdamW (lr 1e-3, weight decay 0.01), early checkpoint at
  epoch 20, λ = 1.
* ``cpu``: the same experiment scaled to a 2-core CPU: lengths scale with map size from 320
  (64³ maps, 32³ patches, borders, shapes and smoothing ×0.2), the 20 % early checkpoint is kept,
  counts (maps, epochs, iterations) shrink to fit the time budget.
* ``smoke``: tiny, for tests and CI.

Every field can be overridden (``Config.from_profile("cpu", epochs=10)``, ``--set epochs=10`` on
the command line, or notebook parameters) and the whole object round-trips through JSON/YAML.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PRECISIONS = ("fp32", "bf16")
NORMS = ("l1", "mse")
FIELD_TARGETS = ("label", "input")
NONFINITE_POLICIES = ("stop", "skip")
DEVICES = ("auto", "cpu", "cuda")
MIN_MAP_SIZE = 16


@dataclass(frozen=True)
class Config:
    """All settings of one run. Lengths in voxels, χ and field in ppm."""

    profile: str = "cpu"  # name of the preset this config started from (informational)
    # --- data (synthetic maps, qsmrep.synth) ---
    map_size: int = 64  # edge length of each cubic synthetic map (paper: 320)
    n_train: int = 64  # training maps (paper: 1000)
    n_val: int = 8  # validation maps, evaluated after every epoch (paper: 100)
    n_test: int = 8  # test maps, a split disjoint from train and validation (paper: not stated)
    data_seed: int = 2023  # seed of the map generator; map i of a split depends on (data_seed, split, i) only
    cache_maps: bool = True  # keep generated maps in memory (small profiles); False = regenerate on the fly
    num_workers: int = 0  # DataLoader worker processes that generate maps ahead (0 = in the main process)
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm; isotropic (paper: not stated)
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)  # B0 along the last axis
    # --- model (qsmrep.unet) ---
    activation: str = "elu"  # relu | leaky_relu | elu | gelu | silu | prelu | mish
    activation_params: dict = field(default_factory=dict)  # e.g. {"negative_slope": 0.2}; {} = registry defaults
    initial_channels: int = 16  # channels of the first level, doubled per level (paper: 16 or 32)
    depth: int = 5  # levels of the U-Net (paper: five)
    norm: str = "batch"  # normalisation after each convolution: batch (Çiçek 2016 3D U-Net) | none | instance | group
    init: str = "he"  # weight initialisation: he (Kaiming-normal, as Ronneberger 2015 prescribes) | default (PyTorch's)
    # --- optimisation ---
    patch_size: int = 32  # edge of the random cubic training patches (paper: 160)
    batch_size: int = 4  # patches per iteration (paper: four)
    epochs: int = 25  # training epochs (paper: 100)
    iters_per_epoch: int = 0  # iterations per epoch; 0 = one pass over the training maps, n_train // batch_size
    early_epoch: int = 0  # epoch of the "early" checkpoint; 0 = 20 % of the budget, as the paper's 20/100
    lr: float = 1e-3  # AdamW learning rate (paper)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (paper)
    lam: float = 1.0  # λ, weight of the field-consistency term (paper)
    chi_norm: str = "l1"  # norm of the susceptibility term: l1 (mean |·|) or mse
    field_norm: str = "l1"  # norm of the field term
    field_target: str = "label"  # field term compares D∗χ̂ with D∗χ of the label patch ("label") or the input field patch ("input")
    seed: int = 0  # training seed: initialisation, map order and patch positions
    # --- execution ---
    device: str = "auto"  # auto (CUDA if present, else CPU) | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast for the network; loss and FFTs stay fp32)
    channels_last: bool = False  # channels-last-3d memory format for the network
    nonfinite: str = "stop"  # on a NaN/Inf loss or gradient: stop (keep last good checkpoint) | skip the step
    val_batch_size: int = 1  # full validation maps per forward pass

    # ------------------------------------------------------------------ derived values
    @property
    def iterations(self) -> int:
        """Iterations per epoch (resolved)."""
        return self.iters_per_epoch or max(1, self.n_train // self.batch_size)

    @property
    def early(self) -> int:
        """Epoch of the early checkpoint (resolved): 20 % of the budget unless set."""
        return self.early_epoch or max(1, round(0.2 * self.epochs))

    @property
    def variant(self) -> str:
        """Short name of the model variant, e.g. ``elu16``."""
        return f"{self.activation}{self.initial_channels}"

    def model_kwargs(self) -> dict:
        """Arguments of :class:`qsmrep.unet.UNet3D` (the architecture part of the config)."""
        return dict(
            initial_channels=self.initial_channels,
            depth=self.depth,
            activation=(self.activation, dict(self.activation_params)),
            norm=self.norm,
            init=self.init,
        )

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "b0_dir", tuple(float(v) for v in self.b0_dir))
        object.__setattr__(self, "activation_params", dict(self.activation_params or {}))
        self.validate()

    @classmethod
    def from_profile(cls, profile: str = "cpu", **overrides: Any) -> "Config":
        """The named preset with ``overrides`` applied (ValueError on unknown names)."""
        if profile not in PROFILES:
            raise ValueError(f"profile: unknown profile {profile!r}; choose one of {sorted(PROFILES)}{_did_you_mean(profile, PROFILES)}")
        values = dict(PROFILES[profile])
        values["profile"] = profile
        values.update(_coerce_overrides(overrides))
        return cls(**values)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied and validated."""
        return dataclasses.replace(self, **_coerce_overrides(overrides))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["voxel_size"] = list(self.voxel_size)
        data["b0_dir"] = list(self.b0_dir)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        return cls(**_coerce_overrides(dict(data)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        """Read a config saved as .json or .yaml/.yml."""
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError(f"config file {str(path)!r} does not hold a mapping")
        return cls.from_dict(data)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        from qsmrep.unet import check_activation  # late import: unet imports nothing from here

        _positive_int(self, "map_size", "n_train", "n_val", "n_test", "initial_channels", "patch_size", "batch_size", "val_batch_size")
        _nonnegative_int(self, "epochs", "iters_per_epoch", "early_epoch", "num_workers", "data_seed", "seed")
        if not isinstance(self.depth, int) or not 1 <= self.depth <= 7:
            raise ValueError(f"depth: must be an integer in 1..7, got {self.depth!r}")
        if self.patch_size > self.map_size:
            raise ValueError(f"patch_size: {self.patch_size} is larger than map_size {self.map_size}; must be ≤ map_size")
        multiple = 2 ** (self.depth - 1)
        if self.patch_size % multiple:
            raise ValueError(
                f"patch_size: {self.patch_size} is not divisible by 2^(depth-1) = {multiple}; "
                f"use a multiple of {multiple} (e.g. {max(multiple, self.patch_size // multiple * multiple)})")
        if self.epochs < 1:
            raise ValueError(f"epochs: must be ≥ 1, got {self.epochs}")
        if self.early_epoch > self.epochs:
            raise ValueError(f"early_epoch: {self.early_epoch} is after the last epoch {self.epochs}; must be in 0..{self.epochs}")
        for name in ("lr", "weight_decay", "lam"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0 or value == float("inf"):
                raise ValueError(f"{name}: must be a finite number ≥ 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        _choice(self, "precision", PRECISIONS)
        _choice(self, "chi_norm", NORMS)
        _choice(self, "field_norm", NORMS)
        _choice(self, "field_target", FIELD_TARGETS)
        _choice(self, "nonfinite", NONFINITE_POLICIES)
        _choice(self, "device", DEVICES)
        _choice(self, "norm", ("none", "batch", "instance", "group"))
        _choice(self, "init", ("default", "he"))
        if len(self.voxel_size) != 3 or not all(v > 0 and v != float("inf") for v in self.voxel_size):
            raise ValueError(f"voxel_size: must be three finite numbers > 0, got {self.voxel_size}")
        if len(self.b0_dir) != 3 or not any(self.b0_dir) or not all(abs(v) != float("inf") and v == v for v in self.b0_dir):
            raise ValueError(f"b0_dir: must be three finite numbers, not all zero, got {self.b0_dir}")
        check_activation(self.activation, self.activation_params)
        if self.map_size < MIN_MAP_SIZE:
            raise ValueError(f"map_size: {self.map_size} is too small; the zero-border rule (40/320 of the size per face) needs ≥ {MIN_MAP_SIZE}")


# Scaling rule: lengths scale with map_size / 320, the 20/100 early ratio is kept, counts shrink.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": dict(
        map_size=320, patch_size=160, batch_size=4, n_train=1000, n_val=100, n_test=20,
        epochs=100, iters_per_epoch=250, early_epoch=20, cache_maps=False, num_workers=6,
    ),
    "cpu": dict(
        map_size=64, patch_size=32, batch_size=4, n_train=64, n_val=8, n_test=8,
        epochs=25, iters_per_epoch=16, early_epoch=5, cache_maps=True, num_workers=0,
    ),
    "smoke": dict(
        map_size=32, patch_size=16, batch_size=4, n_train=8, n_val=2, n_test=2,
        epochs=10, iters_per_epoch=4, early_epoch=2, cache_maps=True, num_workers=0,
    ),
}


def _did_you_mean(value: str, options) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(cfg: Config, name: str, options) -> None:
    value = getattr(cfg, name)
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {list(options)}{_did_you_mean(value, options)}")


def _positive_int(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer ≥ 1, got {value!r}")


def _nonnegative_int(cfg: Config, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: must be an integer ≥ 0, got {value!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override names and convert strings (from the CLI or papermill) to the field's type."""
    out = {}
    for name, value in overrides.items():
        if name not in _FIELDS:
            raise ValueError(f"{name}: not a config field{_did_you_mean(name, _FIELDS)}; fields are {sorted(_FIELDS)}")
        out[name] = _coerce(name, value)
    return out


def _coerce(name: str, value: Any) -> Any:
    default = _FIELDS[name].default
    if default is dataclasses.MISSING:
        default = _FIELDS[name].default_factory()
    if not isinstance(value, str) or isinstance(default, str):
        if isinstance(default, tuple) and isinstance(value, list):
            return tuple(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError(f"{name}: cannot parse {value!r}") from None
    if isinstance(default, bool):
        if not isinstance(parsed, bool):
            raise ValueError(f"{name}: expected true/false, got {value!r}")
        return parsed
    if isinstance(default, int) and not isinstance(parsed, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(parsed)
    if isinstance(default, tuple):
        if not isinstance(parsed, list):
            raise ValueError(f"{name}: expected a list like [1, 1, 1], got {value!r}")
        return tuple(parsed)
    if isinstance(default, dict) and not isinstance(parsed, dict):
        raise ValueError(f"{name}: expected a mapping like {{alpha: 0.5}}, got {value!r}")
    return parsed


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["epochs=10", "lr=1e-4"]`` → ``{"epochs": 10, "lr": 0.0001}`` (typed by the field)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = value.strip()
    return _coerce_overrides(out)
