"""Tests of qsmrep.run.config: profiles, round trips, typed overrides, validation messages."""

import dataclasses

import pytest

from qsmrep import registry
from qsmrep.run import runtime
from qsmrep.run.config import PROFILES, Config, parse_assignments
from qsmrep.core.synth import SynthSettings


def test_profiles_exist():
    assert set(PROFILES) == {"smoke", "cpu", "cpu-long", "gpu", "paper"} == set(registry.PROFILE_NAMES)
    for name in PROFILES:
        cfg = Config.from_profile(name)
        assert cfg.profile == name


def test_paper_profile_is_the_paper():
    p = Config.from_profile("paper")
    assert (p.map_size, p.patch_size, p.batch_size, p.n_train, p.n_val) == (320, 160, 4, 1000, 100)
    assert p.epochs == 100 and p.early == 20
    assert p.iterations == 250  # 250 × 4 patches = one pass over the 1000 maps
    assert (p.lr, p.weight_decay, p.lam) == (1e-3, 0.01, 1.0)
    assert (p.depth, p.chi_norm, p.field_norm) == (5, "l1", "l1")
    assert (p.precision, p.memory_format, p.compile, p.norm) == ("auto", "auto", "auto", "batch")


def test_cpu_and_smoke_profiles():
    c = Config.from_profile("cpu")
    assert c.early == round(0.2 * c.epochs)
    assert c.map_size / c.patch_size == 320 / 160  # same map/patch ratio as the paper
    assert (c.lr, c.weight_decay, c.lam, c.depth) == (1e-3, 0.01, 1.0, 5)
    s = Config.from_profile("smoke")
    assert s.map_size <= 32 and s.patch_size <= 16 and s.epochs <= 10
    assert s.early == 2 == round(0.2 * s.epochs)
    long = Config.from_profile("cpu-long")  # the cpu scale, twice the iterations, the paper's epochs
    assert long.replace(epochs=c.epochs, early_epoch=c.early, profile="cpu") == c
    assert (long.epochs, long.early, long.epochs * long.iterations) == (100, 20, 2 * c.epochs * c.iterations)
    # early defaults to 20 % of the budget when not set
    assert Config.from_profile("cpu", early_epoch=0, epochs=50).early == 10


def test_variant_and_model_kwargs():
    cfg = Config.from_profile("smoke", activation="leaky_relu", initial_channels=32)
    assert cfg.variant == "leaky_relu32"
    assert cfg.model_kwargs() == dict(initial_channels=32, depth=5, activation=("leaky_relu", {}), norm="batch", init="he")


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_yaml_and_json_round_trip(tmp_path, profile):
    cfg = Config.from_profile(profile, activation="elu", activation_params={"alpha": 0.5},
                              voxel_size=(1, 1, 2), b0_dir=(0, 0.6, 0.8), lr=5e-4)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    (tmp_path / "c.json").write_text(cfg.to_json())
    for name in ("c.yaml", "c.json"):
        again = Config.load(tmp_path / name)
        assert again == cfg
        assert again.to_dict() == cfg.to_dict()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_load_rejects_non_mapping(tmp_path):
    (tmp_path / "c.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        Config.load(tmp_path / "c.yaml")


def test_overrides_from_strings_are_typed():
    values = parse_assignments(["epochs=3", "lr=1e-4", "voxel_size=[1,1,2]", "cache_maps=false",
                                "activation=leaky_relu", "activation_params={negative_slope: 0.1}", "lam=1"])
    assert values == {"epochs": 3, "lr": 1e-4, "voxel_size": (1, 1, 2), "cache_maps": False,
                      "activation": "leaky_relu", "activation_params": {"negative_slope": 0.1}, "lam": 1.0}
    assert type(values["epochs"]) is int and type(values["lr"]) is float and type(values["lam"]) is float
    cfg = Config.from_profile("smoke", **values)
    assert cfg.epochs == 3 and cfg.lr == 1e-4 and cfg.voxel_size == (1.0, 1.0, 2.0)
    assert all(type(v) is float for v in cfg.voxel_size)
    # keyword overrides with strings are typed the same way
    assert Config.from_profile("smoke", epochs="4").epochs == 4


def test_replace_validates_and_keeps_type():
    cfg = Config.from_profile("smoke")
    assert cfg.replace(n_test=5).n_test == 5
    with pytest.raises(ValueError, match="n_test"):
        cfg.replace(n_test=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3


@pytest.mark.parametrize("items, field", [
    (["epochs=three"], "epochs"),
    (["lr=fast"], "lr"),
    (["voxel_size=1"], "voxel_size"),
    (["cache_maps=maybe"], "cache_maps"),
    (["activation_params=3"], "activation_params"),
    (["epochs"], "FIELD=VALUE"),
    (["epoch=3"], "epoch"),
])
def test_bad_assignments(items, field):
    with pytest.raises(ValueError, match=field):
        parse_assignments(items)


@pytest.mark.parametrize("overrides, needles", [
    (dict(activation="elux"), ["activation", "elux", "did you mean 'elu'"]),
    (dict(patch_size=64), ["patch_size", "64", "map_size"]),
    (dict(patch_size=24), ["patch_size", "24", "divisible", "16"]),
    (dict(epochs=-1), ["epochs", "-1"]),
    (dict(epochs=0), ["epochs", "0"]),
    (dict(b0_dir=(0, 0, 0)), ["b0_dir", "zero"]),
    (dict(voxel_size=(1, 0, 1)), ["voxel_size", "> 0"]),
    (dict(voxel_size=(1, -1, 1)), ["voxel_size"]),
    (dict(early_epoch=20), ["early_epoch", "20"]),
    (dict(lr=0.0), ["lr"]),
    (dict(precision="fp16"), ["precision", "fp16", "did you mean"]),
    (dict(nonfinite="ignore"), ["nonfinite"]),
    (dict(depth=0), ["depth"]),
    (dict(map_size=8, patch_size=8, depth=4), ["map_size"]),
    (dict(batch_size=0), ["batch_size"]),
    (dict(epochs=True), ["epochs"]),
    (dict(epochz=3), ["epochz", "not a config field", "did you mean 'epochs'"]),
])
def test_validation_names_the_field(overrides, needles):
    with pytest.raises(ValueError) as info:
        Config.from_profile("smoke", **overrides)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message


def test_unknown_profile():
    with pytest.raises(ValueError) as info:
        Config.from_profile("smok")
    message = str(info.value)
    assert "profile" in message and "smok" in message and "did you mean 'smoke'" in message
    for name in PROFILES:
        assert name in message


def test_depth_changes_divisibility():
    assert Config.from_profile("smoke", depth=3, patch_size=12).patch_size == 12
    with pytest.raises(ValueError, match="divisible"):
        Config.from_profile("smoke", depth=3, patch_size=10)


def test_generator_settings_are_part_of_the_config(tmp_path):
    cfg = Config.from_profile("smoke")
    assert cfg.synth == SynthSettings() and cfg.to_dict()["synth"]["n_spheres"] == 80
    changed = Config.from_profile("smoke", **parse_assignments(["synth.n_spheres=40", "synth.sigma=[0.001, 0.002]"]))
    assert changed.synth == SynthSettings(n_spheres=40, sigma=(0.001, 0.002))
    (tmp_path / "c.yaml").write_text(changed.to_yaml())
    assert Config.load(tmp_path / "c.yaml") == changed
    assert Config.from_profile("smoke", synth={"overlap": "overwrite"}).synth.overlap == "overwrite"
    with pytest.raises(ValueError, match=r"synth\.n_sphere: not a generator setting \(did you mean 'n_spheres'\?\)"):
        parse_assignments(["synth.n_sphere=3"])
    with pytest.raises(ValueError, match="synth"):
        Config.from_profile("smoke", synth={"n_spheres": -1})


@pytest.mark.parametrize("amx, avx512_bf16, sound, expected", [
    (False, False, True, ("fp32", "contiguous")),  # an AVX2-only CPU (e.g. the AMD EPYC of the issue): bf16 would be emulated
    (False, True, True, ("bf16", "channels_last")),  # AVX512-BF16 (AMD Zen 4, Intel Cooper Lake)
    (True, False, True, ("bf16", "channels_last")),  # AMX tiles (Intel Sapphire Rapids)
    (True, True, False, ("fp32", "contiguous")),  # native, but its bf16 convolutions fail the soundness probe
])
def test_precision_auto_follows_the_cpu(monkeypatch, amx, avx512_bf16, sound, expected):
    monkeypatch.setattr(runtime.torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(runtime.torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(runtime, "cpu_bf16_sound", lambda: sound)
    resolved = runtime.resolve(Config.from_profile("cpu", device="cpu"))
    assert (resolved.precision, resolved.memory_format) == expected
    assert (resolved.device, resolved.data_device, resolved.compile) == ("cpu", "cpu", "off")
    explicit = runtime.resolve(Config.from_profile("cpu", device="cpu", precision="fp32"))
    assert (explicit.precision, explicit.memory_format) == ("fp32", "contiguous")  # an explicit choice is kept
    unit = "AMX" if amx else "AVX512-BF16" if avx512_bf16 else "no native bf16"  # what a run's seconds were timed on
    assert runtime.machine_label("cpu").split(", ")[-2] == unit


def test_cuda_requested_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: 'cuda' requested but no CUDA device"):
        runtime.resolve(Config.from_profile("smoke", device="cuda"))


def test_the_scale_table_gives_each_setting_here_and_in_the_paper_and_why_only_at_the_current_scale():
    from qsmrep.study.scale import scale_table

    cpu = Config.from_profile("cpu")
    table = scale_table(cpu).set_index("setting")
    # σ in voxels = fraction × map size: the paper-scale generator's 0.5–3 voxels at both scales
    assert table.loc["synth.sigma", "here"] == table.loc["synth.sigma", "paper"] == "σ 0.5–3 voxels"
    assert table.loc["iterations", "here"] == f"{cpu.epochs * cpu.iterations} ({cpu.epochs} epochs × {cpu.iterations})"
    assert table.loc["iterations", "paper"] == "25000 (100 epochs × 250)"
    assert (table.why != "").all()
    older = scale_table(Config.from_profile("cpu", epochs=25, n_train=64, iters_per_epoch=16)).set_index("setting")
    assert (older.why == "").all() and older.loc["iterations", "here"] == "400 (25 epochs × 16)"
