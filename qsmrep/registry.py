"""The one place that lists the study's facts: the paper's variants, the arms, every option list.

Everything else (configuration, command line, workflow, benchmark, estimate, report, results)
reads these names from here, so a new activation, width, arm or profile is added once.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable

#: activations the paper compares, in the order its figures list them
PAPER_ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "elu")
#: initial channels of the U-Net the paper compares
PAPER_CHANNELS: tuple[int, ...] = (16, 32)
#: the paper's six models as (activation, initial channels), 16 channels first
PAPER_VARIANTS: tuple[tuple[str, int], ...] = tuple((a, c) for c in PAPER_CHANNELS for a in PAPER_ACTIVATIONS)
#: the activation the paper recommends; the claims compare it against the others
RECOMMENDED_ACTIVATION = "elu"

#: arms of the study: the U-Net's normalisation layer. "none" is the paper's "standard U-Net"
#: (Ronneberger et al. 2015); "batch" the 3D U-Net of Çiçek et al. 2016 (QSMnet). Default arm first:
#: batch, because at the cpu profile's scale the standard U-Net cannot train the paper's leaky ReLU
#: models (in 6 of their 8 runs of the committed reference, both widths and four seeds, the validation
#: NRMSE blows up to 10³–10⁸ %), which leaves claims C1–C5 untestable there, while batch normalisation
#: trains all 24 runs; "none" is one option away (--arm none|both).
ARMS: tuple[str, ...] = ("batch", "none")
DEFAULT_ARM = ARMS[0]
#: the arm without normalisation, whose divergences the gradient-clipping trial (--clip) measures
STANDARD_UNET_ARM = "none"
#: every normalisation the U-Net can build (arms are a subset)
NORMS: tuple[str, ...] = ("none", "batch", "instance", "group")
#: the word for every arm at once, on the command line (``--arm both``)
ALL_ARMS = "both"
#: how figures and the report name each normalisation: a label, and a phrase after a verdict
ARM_LABELS = {"none": "standard U-Net (no normalisation)", "batch": "batch normalisation",
              "instance": "instance normalisation", "group": "group normalisation"}
ARM_PHRASES = {"none": "without normalisation (the standard U-Net)", "batch": "with batch normalisation"}
#: display names of the activations (figures, tables)
ACTIVATION_LABELS = {"elu": "ELU", "leaky_relu": "leaky ReLU", "relu": "ReLU", "gelu": "GELU", "silu": "SiLU",
                     "prelu": "PReLU", "mish": "Mish"}

#: named configuration presets (qsmrep.run.config.PROFILES holds their values)
PROFILE_NAMES: tuple[str, ...] = ("smoke", "cpu", "cpu-long", "gpu", "paper")

#: option lists of the configuration
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
MEMORY_FORMATS: tuple[str, ...] = ("auto", "contiguous", "channels_last")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
LOSS_NORMS: tuple[str, ...] = ("l1", "mse")
FIELD_TARGETS: tuple[str, ...] = ("label", "input")
NONFINITE_POLICIES: tuple[str, ...] = ("stop", "skip")
INITS: tuple[str, ...] = ("default", "he")
COMPILE_MODES: tuple[str, ...] = ("auto", "off", "on")
OVERLAP_MODES: tuple[str, ...] = ("add", "overwrite")

#: the extended activation sweep at 16 channels (beyond the paper): (activation, parameters)
SWEEP_CHANNELS = 16
SWEEP: tuple[tuple[str, dict], ...] = (
    ("leaky_relu", {"negative_slope": 0.01}), ("leaky_relu", {"negative_slope": 0.1}),
    ("leaky_relu", {"negative_slope": 0.2}), ("leaky_relu", {"negative_slope": 0.3}),
    ("elu", {"alpha": 0.5}), ("elu", {"alpha": 1.0}), ("elu", {"alpha": 2.0}),
    ("gelu", {}), ("silu", {}), ("prelu", {}), ("mish", {}),
)


def activation_key(name: str) -> str:
    """The registry spelling of an activation name: ``"ReLU"`` → ``relu``, ``"leaky-relu"`` → ``leaky_relu``."""
    return name.lower().replace("-", "_")


def variant_name(activation: str, channels: int) -> str:
    """``"elu16"``-style short name of a variant."""
    return f"{activation}{channels}"


def did_you_mean(value, options: Iterable) -> str:
    """`` (did you mean 'elu'?)`` for the closest option, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value, options: Iterable) -> None:
    """ValueError naming ``name``, the valid options and the closest one, unless ``value`` is an option."""
    options = list(options)
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {options}{did_you_mean(value, options)}")


_CHOICES = {"profile": PROFILE_NAMES, "arm": (*ARMS, ALL_ARMS), "widths": PAPER_CHANNELS}


def parse_arms(text: str) -> tuple[str, ...]:
    """``"none,batch"`` or ``"both"`` → the arms (ValueError naming a bad one)."""
    arms = ARMS if text == ALL_ARMS else tuple(a.strip() for a in str(text).split(",") if a.strip())
    if not arms:
        raise ValueError(f"arm: no arm given; choose from {[*ARMS, ALL_ARMS]}")
    for arm in arms:
        check_choice("arm", arm, ARMS)
    return arms


def parse_widths(text: str) -> tuple[int, ...]:
    """``"16,32"`` → ``(16, 32)``: initial-channel counts of the paper's variants (``""``: all of them);
    ValueError on any other."""
    if not str(text).strip():
        return PAPER_CHANNELS
    widths = []
    for item in str(text).split(","):
        width = int(item) if item.strip().isdigit() else item.strip()
        check_choice("widths", width, PAPER_CHANNELS)
        widths.append(width)
    return tuple(widths)


def main(argv: list[str]) -> int:
    """``python3 -m qsmrep.registry NAME VALUE``: exit 0 when VALUE is a valid NAME (profile, arm, widths),
    else one error line and exit 2; for ``arm``, print the arms it names, comma-separated (``both``: every arm; empty: the default arm).
    Needs no third-party package, so ``run_all.sh`` checks its options before set-up."""
    name, value = argv
    try:
        if name == "widths":
            parse_widths(value)
        elif name == "arm":  # empty: the default arm
            check_choice(name, value or DEFAULT_ARM, _CHOICES[name])
            print(",".join(parse_arms(value or DEFAULT_ARM)))
        else:
            check_choice(name, value, _CHOICES[name])
    except ValueError as err:
        print(f"run_all.sh: error: --{err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
