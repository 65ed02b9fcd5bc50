"""Which training-step cases ``bench`` times: variants × settings at the profile's patch, then the MONAI comparison.

A setting is (precision, channels_last): fp32 and bf16 autocast, each contiguous and channels-last-3d.
bf16 is timed only where the device computes it natively (:func:`bf16_usable`).
"""

from __future__ import annotations

from dataclasses import replace

from qsmrep import registry
from qsmrep.run.config import Config
from qsmrep.run.runtime import native_bf16, resolve_device
from qsmrep.bench.steps import DEPTH, MONAI_PATCHES, StepSpec

# (precision, channels_last) settings of the training step
SETTINGS = (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True))
QUICK_ACTIVATIONS = ("elu", "relu")  # --quick times every setting for these, fp32 only for the others


def bf16_usable(device: str) -> bool:
    """True where bf16 is native on ``device`` (an AVX2-only CPU emulates it about 50× slower than fp32:
    those cases would take minutes each)."""
    return native_bf16(resolve_device(device))


def usable_settings(device: str) -> tuple[tuple[str, bool], ...]:
    """The (precision, channels_last) settings worth timing on ``device``: bf16 ones only where :func:`bf16_usable`."""
    return SETTINGS if bf16_usable(device) else tuple(s for s in SETTINGS if s[0] == "fp32")


def base_spec(profile: str, quick: bool, device: str) -> StepSpec:
    """The profile's batch, arm and patch, with the iteration counts of a quick or a full run."""
    config = Config.from_profile(profile)
    return StepSpec(patch=config.patch_size, batch=config.batch_size, device=device, profile=profile,
                    warmup=2 if quick else 4, iters=3 if quick else 5, norm=config.norm)


def step_specs(profile: str, quick: bool, device: str) -> list[StepSpec]:
    """Our training-step cases at the profile's patch size (all variants, the usable settings; fewer when quick)."""
    base = base_spec(profile, quick, device)
    usable = usable_settings(device)
    specs = []
    for activation in registry.PAPER_ACTIVATIONS:
        for channels in registry.PAPER_CHANNELS:
            settings = usable if not quick or activation in QUICK_ACTIVATIONS else usable[:1]
            for precision, channels_last in settings:
                specs.append(replace(base, activation=activation, channels=channels, precision=precision,
                                     channels_last=channels_last))
    return specs


def _fastest_setting(rows: list[dict], variant: str) -> tuple[str, bool] | None:
    timed = [r for r in rows if r["case"] == "train_step" and r["variant"] == variant and r.get("seconds_per_iter")]
    if not timed:
        return None
    best = min(timed, key=lambda r: r["seconds_per_iter"])
    return best["precision"], best["memory_format"] == "channels_last_3d"


def comparison_specs(profile: str, quick: bool, device: str, done: list[dict]) -> list[StepSpec]:
    """Our extra cases at the MONAI patch sizes not yet measured in ``done``, then MONAI fp32 at every
    comparison patch (patches the depth cannot halve four times are left out).

    Quick: elu only, and at a new patch size only the setting that was fastest at the profile's patch.
    """
    base = base_spec(profile, quick, device)
    patches = sorted({*MONAI_PATCHES, base.patch})
    activations = ("elu",) if quick else registry.PAPER_ACTIVATIONS
    ours, monai = [], []
    for activation in activations:
        for channels in registry.PAPER_CHANNELS:
            variant = f"{activation}{channels}"
            for patch in patches:
                if patch % 2 ** (DEPTH - 1):
                    continue
                if not any(r["case"] == "train_step" and r["variant"] == variant and r["patch"] == patch for r in done):
                    settings = list(usable_settings(device))
                    if quick:  # only the setting that was fastest at the profile's patch
                        settings = [_fastest_setting(done, variant) or ("fp32", False)]
                    ours += [replace(base, activation=activation, channels=channels, patch=patch, precision=precision,
                                     channels_last=channels_last) for precision, channels_last in settings]
                monai.append(replace(base, model="monai", activation=activation, channels=channels, patch=patch))
    return ours + monai
