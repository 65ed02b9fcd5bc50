"""One typed configuration for a training/evaluation run, five named profiles, validation.

Profiles:

* ``paper``: the paper exactly: 320³ maps, four 160³ patches per iteration, 1000/100 train/val
  maps, 100 epochs of 250 iterations, AdamW (lr 1e-3, weight decay 0.01), early checkpoint at
  epoch 20, λ = 1.
* ``gpu``: the six variants, evaluation and report in minutes of one H100-class GPU: 128³ maps,
  four 64³ patches, 2000 iterations on patches 8× the ``cpu`` profile's.
* ``cpu``: the same experiment scaled to a 2-core CPU: 64³ maps and 32³ patches, borders and shape
  sizes ×0.2, smoothing in voxels as at 320³, 256 maps, 50 epochs of one pass (3200 iterations), the
  20 % early checkpoint (:data:`SCALE_CHOICES` says why each): the default run, six variants in under 2 h.
* ``cpu-long``: the ``cpu`` scale for twice as many iterations, the paper's 100 epochs: the committed reference.
* ``smoke``: tiny, for tests and CI.

Every field can be overridden (``Config.from_profile("cpu", epochs=10)``, ``--set epochs=10`` or
``--set synth.n_spheres=40`` on the command line, or notebook parameters) and the whole object,
generator settings included, round-trips through JSON/YAML. ``auto`` values (device, precision,
memory format, compile, data device) are resolved for a machine by :func:`qsmrep.run.runtime.resolve`;
a run folder stores the resolved configuration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qsmrep import registry
from qsmrep.registry import check_choice, did_you_mean
from qsmrep.core.synth import MIN_SIZE, SynthSettings


@dataclass(frozen=True)
class Config:
    """All settings of one run. Lengths in voxels, χ and field in ppm."""

    profile: str = "cpu"  # name of the preset this config started from (informational)
    # --- data (synthetic maps, qsmrep.core.synth) ---
    map_size: int = 64  # edge length of each cubic synthetic map (paper: 320)
    n_train: int = 64  # training maps (paper: 1000)
    n_val: int = 8  # validation maps, evaluated after every epoch (paper: 100)
    n_test: int = 8  # test maps, a split disjoint from train and validation (paper: not stated)
    data_seed: int = 2023  # seed of the map generator; map i of a split depends on (data_seed, split, i) only
    synth: SynthSettings = field(default_factory=SynthSettings)  # shape counts, sizes, smoothing, border, overlap
    cache_maps: bool = True  # render every map once and keep it (on the data device); False = render per batch
    num_workers: int = 0  # CPU DataLoader workers rendering maps ahead (data_device cpu, cache_maps false)
    data_device: str = "auto"  # where maps are rendered: auto (the training device) | cpu | cuda
    # --- geometry (qsmrep.core.physics.DipolePhysics) ---
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mm; isotropic (paper: not stated)
    b0_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)  # B0 along the last axis
    field_pad: int = 0  # zero-padding voxels per face of the dipole FFT (maps have zero borders)
    # --- model (qsmrep.core.unet) ---
    activation: str = "elu"  # a name of qsmrep.core.unet.ACTIVATIONS (the paper's three: qsmrep.registry.PAPER_ACTIVATIONS)
    activation_params: dict = field(default_factory=dict)  # e.g. {"negative_slope": 0.2}; {} = registry defaults
    initial_channels: int = 16  # channels of the first level, doubled per level (paper: 16 or 32)
    depth: int = 5  # levels of the U-Net (paper: five)
    norm: str = registry.DEFAULT_ARM  # the arm: batch (Çiçek 2016; default) | none (standard U-Net, Ronneberger 2015) | instance | group
    init: str = "he"  # weight initialisation: he (Kaiming-normal, as Ronneberger 2015 prescribes) | default (PyTorch's)
    # --- optimisation ---
    patch_size: int = 32  # edge of the random cubic training patches (paper: 160)
    batch_size: int = 4  # patches per iteration (paper: four)
    epochs: int = 25  # training epochs (paper: 100)
    iters_per_epoch: int = 0  # iterations per epoch; 0 = one pass over the training maps, n_train // batch_size
    early_epoch: int = 0  # epoch of the "early" checkpoint; 0 = 20 % of the budget, as the paper's 20/100
    lr: float = 1e-3  # AdamW learning rate (paper)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (paper)
    grad_clip: float = 0.0  # clip the gradient's global L2 norm to this value; 0 = off (paper: not stated)
    lam: float = 1.0  # λ, weight of the field-consistency term (paper)
    chi_norm: str = "l1"  # norm of the susceptibility term: l1 (mean |·|) or mse
    field_norm: str = "l1"  # norm of the field term
    field_target: str = "label"  # field term compares D∗χ̂ with D∗χ of the label patch ("label") or the input field patch ("input")
    seed: int = 0  # training seed: initialisation, map order and patch positions
    # --- execution ---
    device: str = "auto"  # auto (CUDA if present, else CPU) | cpu | cuda
    precision: str = "auto"  # auto (bf16 where the hardware has native bf16, else fp32) | fp32 | bf16 (autocast; loss and FFTs stay fp32)
    memory_format: str = "auto"  # auto (channels_last with bf16) | contiguous | channels_last (channels-last-3d)
    compile: str = "auto"  # torch.compile the training step: auto (off until measured to pay) | off | on
    nonfinite: str = "stop"  # on a NaN/Inf loss or gradient: stop (the run is a diverged result) | skip the step

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
        return registry.variant_name(self.activation, self.initial_channels)

    @property
    def arm(self) -> str:
        """The study arm this run belongs to: its normalisation (see :data:`qsmrep.registry.ARMS`)."""
        return self.norm

    def model_kwargs(self) -> dict:
        """Arguments of :class:`qsmrep.core.unet.UNet3D` (the architecture part of the config)."""
        return dict(
            initial_channels=self.initial_channels,
            depth=self.depth,
            activation=(self.activation, dict(self.activation_params)),
            norm=self.norm,
            init=self.init,
        )

    def data_identity(self) -> dict:
        """The fields that decide which validation and test maps a run sees (two runs with equal
        identities are evaluated on the same maps)."""
        data = self.to_dict()
        return {name: data[name] for name in DATA_FIELDS}

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        object.__setattr__(self, "voxel_size", tuple(float(v) for v in self.voxel_size))
        object.__setattr__(self, "b0_dir", tuple(float(v) for v in self.b0_dir))
        object.__setattr__(self, "activation_params", dict(self.activation_params or {}))
        object.__setattr__(self, "synth", _synth_settings(self.synth))
        if isinstance(self.activation, str):  # "ReLU" and "leaky-relu" name the registry's relu and leaky_relu
            object.__setattr__(self, "activation", registry.activation_key(self.activation))
        self.validate()

    @classmethod
    def from_profile(cls, profile: str = "cpu", **overrides: Any) -> "Config":
        """The named preset with ``overrides`` applied (ValueError on unknown names).

        Where ``epochs`` is overridden and ``early_epoch`` is not, the early checkpoint keeps the profile's
        fraction of the run (20 %: ``round(epochs · early/epochs)``, at least 1), so a shorter run stays valid.
        """
        if profile not in PROFILES:
            raise ValueError(f"profile: unknown profile {profile!r}; choose one of {sorted(PROFILES)}{did_you_mean(profile, PROFILES)}")
        if "profile" in overrides:
            raise ValueError("profile: choose the profile itself (--profile NAME), not as an override")
        values = dict(PROFILES[profile])
        values["profile"] = profile
        overrides = _coerce_overrides(overrides)
        epochs = overrides.get("epochs")
        if "early_epoch" not in overrides and isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1:
            values["early_epoch"] = max(1, round(epochs * values["early_epoch"] / values["epochs"]))
        values.update(overrides)
        return cls(**values)

    def replace(self, **overrides: Any) -> "Config":
        """A copy with ``overrides`` applied and validated."""
        return dataclasses.replace(self, **_coerce_overrides(overrides))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["voxel_size"] = list(self.voxel_size)
        data["b0_dir"] = list(self.b0_dir)
        data["synth"] = {k: list(v) if isinstance(v, tuple) else v for k, v in data["synth"].items()}
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
        """Read a config saved as .json or .yaml/.yml (every field not in the file takes its class default)."""
        return cls.from_dict(read_mapping(path))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        from qsmrep.core.unet import check_activation  # late import: unet imports nothing from here

        _positive_int(self, "map_size", "n_train", "n_val", "n_test", "initial_channels", "patch_size", "batch_size")
        _nonnegative_int(self, "epochs", "iters_per_epoch", "early_epoch", "num_workers", "data_seed", "seed", "field_pad")
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
        for name in ("lr", "weight_decay", "lam", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value != value or value < 0 or value == float("inf"):
                raise ValueError(f"{name}: must be a finite number ≥ 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        for name, options in (("precision", registry.PRECISIONS), ("memory_format", registry.MEMORY_FORMATS),
                              ("chi_norm", registry.LOSS_NORMS), ("field_norm", registry.LOSS_NORMS),
                              ("field_target", registry.FIELD_TARGETS), ("nonfinite", registry.NONFINITE_POLICIES),
                              ("device", registry.DEVICES), ("data_device", registry.DEVICES), ("norm", registry.NORMS),
                              ("init", registry.INITS), ("compile", registry.COMPILE_MODES)):
            check_choice(name, getattr(self, name), options)
        if len(self.voxel_size) != 3 or not all(v > 0 and v != float("inf") for v in self.voxel_size):
            raise ValueError(f"voxel_size: must be three finite numbers > 0, got {self.voxel_size}")
        if len(self.b0_dir) != 3 or not any(self.b0_dir) or not all(abs(v) != float("inf") and v == v for v in self.b0_dir):
            raise ValueError(f"b0_dir: must be three finite numbers, not all zero, got {self.b0_dir}")
        check_activation(self.activation, self.activation_params)
        if self.map_size < MIN_SIZE:
            raise ValueError(f"map_size: {self.map_size} is too small; the zero-border rule (40/320 of the size per face) needs ≥ {MIN_SIZE}")


#: fields that decide the validation and test maps (see :meth:`Config.data_identity`)
DATA_FIELDS = ("map_size", "n_test", "data_seed", "synth", "voxel_size", "b0_dir", "field_pad")
#: fields that do not change the numbers a run produces; a resumed run may differ in them
EXECUTION_FIELDS = ("profile", "num_workers", "cache_maps", "compile")

# Scaling rule: lengths scale with map_size / 320, the 20/100 early ratio is kept, counts shrink.
_CPU = dict(  # the choices and their reasons: SCALE_CHOICES["cpu"]
    map_size=64, patch_size=32, batch_size=4, n_train=256, n_val=8, n_test=8,
    epochs=50, iters_per_epoch=64, early_epoch=10, cache_maps=True, num_workers=0,
    synth=dict(sigma=(0.5 / 64, 3.0 / 64)),
)
PROFILES: dict[str, dict[str, Any]] = {
    "paper": dict(
        map_size=320, patch_size=160, batch_size=4, n_train=1000, n_val=100, n_test=20,
        epochs=100, iters_per_epoch=250, early_epoch=20, cache_maps=False, num_workers=6,
    ),
    "gpu": dict(
        map_size=128, patch_size=64, batch_size=4, n_train=256, n_val=16, n_test=16,
        epochs=25, iters_per_epoch=80, early_epoch=5, cache_maps=True, num_workers=0,
    ),
    "cpu": _CPU,
    "cpu-long": {**_CPU, "epochs": 100, "early_epoch": 20},  # the cpu scale trained twice as long
    "smoke": dict(
        map_size=32, patch_size=16, batch_size=4, n_train=8, n_val=2, n_test=2,
        epochs=10, iters_per_epoch=4, early_epoch=2, cache_maps=True, num_workers=0,
    ),
}
assert tuple(sorted(PROFILES)) == tuple(sorted(registry.PROFILE_NAMES))

#: where a scaled profile departs from "lengths scale with map_size / 320, counts shrink", and why (the report's
#: "Scale of this run" prints these beside the values; the measurements behind them are in the README)
SCALE_CHOICES: dict[str, dict[str, str]] = {
    "cpu": {
        "maps": "map, patch, borders and shape sizes are the paper's × 0.2 (a patch is half the map's side, as 160 of "
                "320, so a patch holds the same share of support, 35 % on average); a step on 32³ patches is what "
                "buys thousands of iterations on 2 cores (48³ would cost 3.4× per step)",
        "iterations": "the compute goes to iterations: 3200 (8× the previous cpu scale's 400), the most the default "
                      "run (six variants, one seed) fits in 2 h on 2 cores; at 400 every network was still learning "
                      "and ended at twice the error of TKD",
        "n_train": "256 maps and 64 iterations per epoch: an epoch is one pass over the training maps in batches of "
                   "four, as the paper's 250 × 4 over 1000 maps",
        "synth.sigma": "smoothing in voxels, not as a fraction of the map: 0.5–3 voxels, the edge profile of the "
                       "paper-scale generator (scaled by 0.2 it was 0.1–0.6 voxels: voxel-sharp edges)",
        "early_epoch": "the paper's 20 % of the budget",
    },
}
SCALE_CHOICES["cpu-long"] = {
    **SCALE_CHOICES["cpu"],
    "iterations": "twice the cpu scale's: the default run's models continued from 3200 to 6400 iterations still "
                  "lowered their test NRMSE by 3–6.5 points (README, 'The default run at the new scale')",
    "early_epoch": "epoch 20 of 100, as in the paper"}


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


def _synth_settings(value: Any) -> SynthSettings:
    """A :class:`SynthSettings` from itself, a (partial) mapping over the defaults, or a YAML mapping string."""
    if isinstance(value, SynthSettings):
        return value
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"synth: cannot parse {value!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"synth: expected a mapping like {{n_spheres: 40}}, got {value!r}")
    names = {f.name for f in dataclasses.fields(SynthSettings)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(f"synth.{unknown[0]}: not a generator setting{did_you_mean(unknown[0], names)}; settings are {sorted(names)}")
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    try:
        return dataclasses.replace(SynthSettings(), **given)
    except (TypeError, ValueError) as err:
        raise ValueError(f"synth: {err}") from None


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override names and convert strings (from the CLI or papermill) to the field's type.

    ``synth.NAME`` keys set one generator setting; they merge into ``synth`` (given or default)."""
    out: dict[str, Any] = {}
    synth_parts: dict[str, Any] = {}
    for name, value in overrides.items():
        if name.startswith("synth."):
            part = name.split(".", 1)[1]
            synth_parts[part] = yaml.safe_load(value) if isinstance(value, str) else value
            continue
        if name not in _FIELDS:
            raise ValueError(f"{name}: not a config field{did_you_mean(name, _FIELDS)}; fields are {sorted(_FIELDS)}")
        out[name] = _synth_settings(value) if name == "synth" else _coerce(name, value)
    if synth_parts:
        base = out.get("synth", SynthSettings())
        out["synth"] = _synth_settings({**dataclasses.asdict(base), **synth_parts})
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


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of a .json or .yaml/.yml config file; ValueError (naming the file) when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"config file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ValueError(f"config file {str(path)!r} cannot be read: {err.strerror or err}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"config file {str(path)!r} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} does not hold a mapping")
    return data


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """``["epochs=10", "lr=1e-4", "synth.n_spheres=40"]`` → typed overrides (``synth`` merged)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set: expected FIELD=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        out[name.strip()] = value.strip()
    return _coerce_overrides(out)
