"""Tests of qsmrep.core.unet: shapes from a table, the activation registry, parameter counts, gradients."""

import pytest
import torch
from torch import nn

from qsmrep.core.loss import PhysicsInformedLoss
from qsmrep.core.unet import ACTIVATIONS, UNet3D, count_parameters, make_activation

# [kwargs, input_shape, expected_shape]; odd sizes are padded to a multiple of 2^(depth-1) and cropped back.
SHAPE_CASES = [
    [dict(initial_channels=2, depth=1), (1, 1, 5, 6, 7), (1, 1, 5, 6, 7)],
    [dict(initial_channels=2, depth=2), (2, 1, 8, 8, 8), (2, 1, 8, 8, 8)],
    [dict(initial_channels=2, depth=2), (1, 1, 9, 10, 11), (1, 1, 9, 10, 11)],
    [dict(initial_channels=2, depth=3, activation="relu"), (1, 1, 17, 16, 20), (1, 1, 17, 16, 20)],
    [dict(initial_channels=2, depth=4, activation="leaky_relu"), (2, 1, 33, 34, 35), (2, 1, 33, 34, 35)],
    [dict(initial_channels=2, depth=5, activation="elu"), (1, 1, 17, 16, 20), (1, 1, 17, 16, 20)],
    [dict(initial_channels=2, depth=5, activation="gelu"), (2, 1, 33, 34, 35), (2, 1, 33, 34, 35)],
    [dict(initial_channels=2, depth=5, norm="group"), (1, 1, 16, 16, 16), (1, 1, 16, 16, 16)],
    [dict(initial_channels=2, depth=5, out_channels=2), (1, 1, 3, 1, 2), (1, 2, 3, 1, 2)],
]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kwargs, input_shape, expected_shape", SHAPE_CASES)
def test_output_shape(kwargs, input_shape, expected_shape):
    torch.manual_seed(0)
    model = UNet3D(**kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(input_shape))
    assert tuple(out.shape) == expected_shape
    assert torch.isfinite(out).all()


def test_padding_does_not_leak_into_the_crop_origin():
    """An odd-sized input equals the top-left crop of the output on its zero-padded version."""
    torch.manual_seed(0)
    model = UNet3D(initial_channels=2, depth=3).eval()
    x = torch.randn(1, 1, 9, 10, 11)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 2, 0, 3))  # → 12×12×12, a multiple of 4
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :9, :10, :11], atol=1e-6)


def test_bad_input_rank():
    with pytest.raises(ValueError, match="input"):
        UNet3D(initial_channels=2, depth=2)(torch.zeros(1, 8, 8, 8))


@pytest.mark.parametrize("kwargs, field", [
    (dict(initial_channels=0), "initial_channels"),
    (dict(depth=0), "depth"),
    (dict(depth=8), "depth"),
    (dict(norm="layer"), "norm"),
    (dict(activation="elux"), "activation"),
])
def test_bad_constructor_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        UNet3D(**kwargs)


# ------------------------------------------------------------------ activation registry
EXPECTED_LAYERS = {
    "relu": (nn.ReLU, {}),
    "leaky_relu": (nn.LeakyReLU, {"negative_slope": 0.2}),
    "elu": (nn.ELU, {"alpha": 1.0}),
    "gelu": (nn.GELU, {"approximate": "none"}),
    "silu": (nn.SiLU, {}),
    "prelu": (nn.PReLU, {"num_parameters": 1}),
    "mish": (nn.Mish, {}),
}


def test_registry_names():
    assert set(ACTIVATIONS) == set(EXPECTED_LAYERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_registry_returns_exact_layer(name):
    cls, attrs = EXPECTED_LAYERS[name]
    layer = make_activation(name)
    assert type(layer) is cls
    for attr, value in attrs.items():
        assert getattr(layer, attr) == value
    # a fresh layer each call, never a shared instance
    assert make_activation(name) is not layer


def test_registry_defaults_and_parameters():
    assert make_activation("leaky_relu").negative_slope == 0.2
    assert make_activation("elu").alpha == 1.0
    elu = make_activation(("elu", {"alpha": 0.5}))
    assert type(elu) is nn.ELU and elu.alpha == 0.5
    leaky = make_activation("leaky_relu", {"negative_slope": 0.01})
    assert type(leaky) is nn.LeakyReLU and leaky.negative_slope == 0.01
    prelu = make_activation(("prelu", {"init": 0.1}))
    assert type(prelu) is nn.PReLU and torch.allclose(prelu.weight, torch.tensor([0.1]))
    assert make_activation("Leaky-ReLU").negative_slope == 0.2  # case and dash tolerant


def test_registry_unknown_name_lists_valid_and_suggests():
    with pytest.raises(ValueError) as info:
        make_activation("elux")
    message = str(info.value)
    assert "did you mean 'elu'" in message
    for name in ACTIVATIONS:
        assert name in message
    with pytest.raises(ValueError, match="valid names"):
        make_activation("softsign")


def test_registry_bad_parameter_and_spec():
    with pytest.raises(ValueError, match="elu"):
        make_activation(("elu", {"beta": 3}))
    with pytest.raises(ValueError, match="activation"):
        make_activation(("elu", 0.5))


@pytest.mark.parametrize("spec, cls, attrs", [
    ("relu", nn.ReLU, {}),
    ("leaky_relu", nn.LeakyReLU, {"negative_slope": 0.2}),
    ("elu", nn.ELU, {"alpha": 1.0}),
    (("elu", {"alpha": 0.5}), nn.ELU, {"alpha": 0.5}),
    ("mish", nn.Mish, {}),
])
def test_model_uses_requested_activation_everywhere(spec, cls, attrs):
    model = UNet3D(initial_channels=2, depth=5, activation=spec)
    acts = [m for m in model.modules() if m.__class__.__module__ == "torch.nn.modules.activation"]
    # two activations per DoubleConv: depth encoders + (depth-1) decoders
    assert len(acts) == 2 * (5 + 4)
    for act in acts:
        assert type(act) is cls
        for attr, value in attrs.items():
            assert getattr(act, attr) == value
    assert len({id(a) for a in acts}) == len(acts)  # distinct instances (matters for PReLU)


# ------------------------------------------------------------------ parameter counts
# Hand count, depth 5, widths c0·(1, 2, 4, 8, 16); no activation of the paper has parameters, so the
# count depends on the width only. Each convolution is followed by batch normalisation (default),
# which adds a scale and a shift per channel:
#   relu16 = leaky_relu16 = elu16 = 5,647,857 parameters (5,644,913 without normalisation)
#   relu32 = leaky_relu32 = elu32 = 22,581,217 parameters (22,575,329 without normalisation)
def _double_conv(cin, cout, norm=True):
    return 27 * cin * cout + cout + 27 * cout * cout + cout + (4 * cout if norm else 0)


def _hand_count(c0, depth=5, norm=True):
    widths = [c0 * 2**level for level in range(depth)]
    total = _double_conv(1, widths[0], norm)
    total += sum(_double_conv(widths[l - 1], widths[l], norm) for l in range(1, depth))
    for w in widths[:-1]:  # decoder: transposed conv 2³ (2w → w), then DoubleConv(2w, w)
        total += 8 * (2 * w) * w + w
        total += _double_conv(2 * w, w, norm)
    total += 1 * widths[0] + 1  # 1×1×1 head to one channel
    return total


PAPER_COUNTS = {16: 5_647_857, 32: 22_581_217}
PAPER_COUNTS_NO_NORM = {16: 5_644_913, 32: 22_575_329}


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
@pytest.mark.parametrize("channels", [16, 32])
def test_parameter_count_of_paper_variants(activation, channels):
    model = UNet3D(initial_channels=channels, depth=5, activation=activation)  # default: batch normalisation
    n = count_parameters(model)
    print(f"{activation}{channels}: {n:,} parameters")
    assert _hand_count(channels) == PAPER_COUNTS[channels]
    assert n == PAPER_COUNTS[channels]
    plain = count_parameters(UNet3D(initial_channels=channels, depth=5, activation=activation, norm="none"))  # standard U-Net
    assert plain == _hand_count(channels, norm=False) == PAPER_COUNTS_NO_NORM[channels]


def test_prelu_adds_one_parameter_per_layer():
    base = count_parameters(UNet3D(initial_channels=2, depth=3, activation="relu"))
    assert count_parameters(UNet3D(initial_channels=2, depth=3, activation="prelu")) == base + 2 * (3 + 2)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
def test_loss_gradient_reaches_every_parameter(activation):
    torch.manual_seed(0)
    model = UNet3D(initial_channels=2, depth=5, activation=activation)
    field = torch.randn(2, 1, 16, 16, 16) * 0.1
    chi = torch.randn(2, 1, 16, 16, 16) * 0.1
    loss = PhysicsInformedLoss()(model(field), chi, field)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.norm() > 0, name


def test_he_initialisation_matches_ronneberger():
    """init="he": every convolution's weights ~ N(0, 2/fan_in) (Ronneberger 2015), biases zero."""
    torch.manual_seed(0)
    model = UNet3D(initial_channels=8, depth=3, activation="relu", init="he")
    for module in model.modules():
        if isinstance(module, nn.Conv3d) and module.weight.numel() > 1000:
            fan_in = module.weight[0].numel()
            assert abs(module.weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.1
            assert torch.count_nonzero(module.bias) == 0
    torch.manual_seed(0)
    default = UNet3D(initial_channels=8, depth=3, activation="relu", init="default")
    assert torch.count_nonzero(default.encoders[0][0].bias) > 0  # PyTorch's default: uniform biases
    with pytest.raises(ValueError, match="init"):
        UNet3D(init="xavier")


def test_thin_levels_run_in_fp32_under_cpu_bf16_autocast():
    """oneDNN's bf16 weight gradient of a 3³ convolution on a depth-2 input is wrong on AVX512-BF16 CPUs; such
    levels (the 2³ bottleneck of a 32³ patch) run in fp32, every other level in bf16, with gradients everywhere."""
    from qsmrep.core.unet import CPU_BF16_MIN_DEPTH, DoubleConv

    block = DoubleConv(4, 4, "elu", "none")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        thin = block(torch.randn(1, 4, CPU_BF16_MIN_DEPTH - 1, 4, 4))
        thick = block(torch.randn(1, 4, CPU_BF16_MIN_DEPTH, 4, 4))
    assert thin.dtype == torch.float32 and thick.dtype == torch.bfloat16
    assert block(torch.randn(1, 4, 2, 2, 2)).dtype == torch.float32  # no autocast: unchanged
    model = UNet3D(initial_channels=2, depth=5, activation="elu")
    x = torch.randn(2, 1, 32, 32, 32)
    grads = []
    for _ in range(2):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:  # repeatable and finite, the 2³ bottleneck included
        assert torch.equal(grads[0][name], grads[1][name]) and torch.isfinite(grads[0][name]).all(), name
