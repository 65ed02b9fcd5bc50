"""Tests of qsmrep.bench on tiny cases (4-channel nets, 16³ patches, one iteration): the rows, FLOP counting,
the plan, the CLI, and that every timed step is the trainer's :class:`qsmrep.run.step.TrainingStep`."""

import ast
import importlib.util
import json
import math
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import qsmrep.bench
from qsmrep import registry
from qsmrep.bench import cli, data, plan, steps
from qsmrep.bench.rows import BASE_KEYS, make_row, to_json
from qsmrep.bench.steps import StepSpec
from qsmrep.run.config import Config
from qsmrep.run.step import TrainingStep

TINY = dict(activation="elu", channels=4, patch=16, batch=2, warmup=1, iters=1, device="cpu", profile="smoke")
NUMBERS = ("seconds_per_iter", "voxels_per_s", "gflops_per_s", "peak_mem_mb")


def _check_step_row(row, case):
    assert not row.get("error"), row.get("error")
    assert set(BASE_KEYS) <= set(row)
    assert row["case"] == case and row["variant"] == "elu4" and row["patch"] == 16
    for key in NUMBERS:
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row[key])
    assert row["voxels_per_s"] == pytest.approx(2 * 16**3 / row["seconds_per_iter"])
    assert row["figure"] == "seconds_per_iter" and row["unit"] == "s/iter"
    json.loads(to_json(row))


@pytest.fixture
def step_calls(monkeypatch):
    """The :class:`TrainingStep` of every step call, in order (the step itself runs unchanged)."""
    calls = []
    original = TrainingStep.__call__

    def counting(self, field, chi):
        calls.append(self)
        return original(self, field, chi)

    monkeypatch.setattr(TrainingStep, "__call__", counting)
    return calls


def test_bench_times_the_trainers_training_step(step_calls):
    """time_step calls TrainingStep once per warm-up and timed iteration, built with the profile's optimiser settings."""
    spec = StepSpec(**{**TINY, "depth": 3})
    result = steps.time_step(spec)
    assert len(result["warmup_times"]) == spec.warmup and len(result["times"]) == spec.iters
    assert len(step_calls) == spec.warmup + spec.iters
    step, profile = step_calls[0], Config.from_profile("smoke")
    group = step.optimizer.param_groups[0]
    assert isinstance(step.optimizer, torch.optim.AdamW)
    assert (group["lr"], group["weight_decay"], step.grad_clip) == (profile.lr, profile.weight_decay, profile.grad_clip)
    assert (step.precision, step.memory_format) == ("fp32", "contiguous") and math.isfinite(result["loss"])


def test_channels_last_case_runs_the_step_in_channels_last(step_calls):
    steps.time_step(StepSpec(**{**TINY, "depth": 3, "channels_last": True}))
    step = step_calls[0]
    assert step.memory_format == "channels_last"
    weight = next(p for p in step.model.parameters() if p.dim() == 5)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_the_trainer_calls_the_same_training_step(step_calls, tmp_path):
    from qsmrep.run.trainer import train

    train(Config.from_profile("smoke", epochs=1, iters_per_epoch=2, early_epoch=1), tmp_path / "run", progress=False)
    assert len(step_calls) == 2


def test_a_non_finite_step_gives_an_error_row(monkeypatch):
    """A step that changed no weight has no training step's time: the case fails instead of reporting it."""
    from qsmrep.run.step import StepResult

    monkeypatch.setattr(TrainingStep, "__call__", lambda self, field, chi: StepResult({"total": torch.tensor(math.nan)}, False))
    row = steps.run_step_case(StepSpec(**{**TINY, "depth": 3}), isolate=False)
    assert "FloatingPointError" in row["error"] and row["seconds_per_iter"] is None


def test_monai_case_and_speed_ratio(step_calls):
    pytest.importorskip("monai")
    from monai.networks.nets import BasicUNet

    ref = steps.run_step_case(StepSpec(**TINY, model="monai"), isolate=False)
    _check_step_row(ref, "monai_step")
    assert len(step_calls) == ref["warmup_used"] + ref["iters"]  # the MONAI net is timed through the same step
    assert all(isinstance(step.model, BasicUNet) for step in step_calls)
    ours = make_row(case="train_step", variant="elu4", patch=16, precision="fp32", memory_format="contiguous",
                      seconds_per_iter=ref["seconds_per_iter"] / 2, voxels_per_s=1.0, gflops_per_s=1.0, peak_mem_mb=1.0)
    (ratio,) = steps.speed_ratio_rows([ours, ref])
    assert ratio["case"] == "monai_ratio" and set(BASE_KEYS) <= set(ratio)
    assert ratio["speed_ratio"] == pytest.approx(2.0)


def test_speed_ratio_uses_the_fastest_setting():
    rows = [make_row(case="train_step", variant="elu16", patch=32, precision=p, memory_format=m, seconds_per_iter=s,
                       voxels_per_s=1.0, gflops_per_s=1.0, peak_mem_mb=1.0)
            for p, m, s in (("fp32", "contiguous", 2.0), ("bf16", "channels_last_3d", 0.5))]
    rows.append(make_row(case="monai_step", variant="elu16", patch=32, precision="fp32", seconds_per_iter=1.5))
    (ratio,) = steps.speed_ratio_rows(rows)
    assert ratio["speed_ratio"] == pytest.approx(3.0) and ratio["speed_ratio_fp32"] == pytest.approx(0.75)
    assert ratio["precision"] == "bf16" and ratio["meets_target"]


def test_flop_count_of_one_conv3d_matches_hand_count():
    conv = nn.Conv3d(2, 4, kernel_size=3, padding=1)
    shape = (1, 2, 8, 8, 8)
    hand = 2 * 4 * 8**3 * 2 * 3**3  # 2 FLOPs per multiply-add, per output voxel and channel: C_in·k³
    forward = steps.count_flops(conv, shape, backward=False)
    assert forward == pytest.approx(hand, rel=0.2)
    # backward without an input gradient: the weight gradient only, as many FLOPs as the forward
    assert steps.count_flops(conv, shape) == pytest.approx(2 * hand, rel=0.2)


def test_step_flops_on_meta_device_equals_a_real_count():
    spec = StepSpec(**TINY)
    model = steps.build_net(spec)
    assert steps.step_flops(spec) == steps.count_flops(model, (2, 1, 16, 16, 16))


def test_data_side_rows():
    (gen,) = data.generator_rows(sizes=(16,), repeats=1)
    assert gen["case"] == "generator" and gen["seconds_per_sample"] > 0 and gen["unit"] == "s/sample"
    (ff,) = data.forward_field_rows(size=16, batch=1, repeats=1)
    assert ff["case"] == "forward_field" and ff["voxels_per_s"] > 0
    rows = data.stall_rows("smoke", epochs=1, device="cpu", initial_channels=4, depth=3, n_train=4, n_val=1,
                            iters_per_epoch=2)
    assert [r["scope"] for r in rows] == ["run", "last_epoch"]
    for row in rows:
        assert 0 <= row["stall_fraction"] < 1 and row["seconds"] > 0 and set(BASE_KEYS) <= set(row)


def test_main_prints_pure_json_lines_from_isolated_cases(monkeypatch, capsys):
    monkeypatch.setattr(plan, "native_bf16", lambda device: True)
    monkeypatch.setattr(cli, "step_specs", lambda profile, quick, device: [StepSpec(**TINY, precision="bf16")])
    monkeypatch.setattr(cli, "generator_rows", lambda **kw: [])
    monkeypatch.setattr(cli, "forward_field_rows", lambda **kw: [])
    monkeypatch.setattr(cli, "stall_rows", lambda *a, **kw: [])
    code = cli.main(SimpleNamespace(profile="smoke", quick=True, json=True, no_monai=True))
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1
    row = json.loads(out[0])
    _check_step_row(row, "train_step")
    assert row["precision"] == "bf16"
    assert row["peak_mem_kind"] == "process peak RSS"  # on a CPU each case ran in a fresh worker process
    table = cli.summary_table([row])
    assert "train_step" in table and "s/iter" in table


def test_without_native_bf16_the_bf16_cases_are_skipped_and_said(monkeypatch, capsys):
    """An AVX2-only CPU emulates bf16 ~50x slower: no bf16 case is timed, and the output says why."""
    monkeypatch.setattr(plan, "native_bf16", lambda device: False)
    specs = plan.step_specs("cpu", quick=True, device="cpu")
    assert specs and {s.precision for s in specs} == {"fp32"}
    assert {s.variant for s in specs} == {f"{a}{c}" for a, c in registry.PAPER_VARIANTS}
    monkeypatch.setattr(cli, "step_specs", lambda profile, quick, device: [])
    monkeypatch.setattr(cli, "generator_rows", lambda **kw: [])
    monkeypatch.setattr(cli, "forward_field_rows", lambda **kw: [])
    monkeypatch.setattr(cli, "stall_rows", lambda *a, **kw: [])
    assert cli.main(SimpleNamespace(profile="smoke", quick=True, json=True, no_monai=True)) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert row["case"] == "skipped" and row["precision"] == "bf16" and "no native bf16" in row["unit"]


def test_quick_budget_skips_the_remaining_step_cases(monkeypatch, capsys):
    monkeypatch.setattr(cli, "QUICK_BUDGET_SECONDS", -1)
    monkeypatch.setattr(cli, "step_specs", lambda profile, quick, device: [StepSpec(**TINY)])
    for name in ("generator_rows", "forward_field_rows"):
        monkeypatch.setattr(cli, name, lambda **kw: [])
    monkeypatch.setattr(cli, "stall_rows", lambda *a, **kw: [])
    cli.main(SimpleNamespace(profile="smoke", quick=True, json=True, no_monai=True))
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["case"] for r in rows if r["case"] != "skipped" or "budget" in r["unit"]] == ["skipped"]


def test_paper_rows_run_at_smoke_scale_on_a_cpu(step_calls):
    """The GPU benchmark's code path (steps, data path rendered per batch, validation, memory, evaluation,
    projection) without a GPU; every step row and the data path (with data and bare) run the trainer's TrainingStep."""
    from qsmrep.bench.paper import DATA_PATH_WARMUP, paper_rows

    emitted = []
    rows = paper_rows("smoke", "cpu", use_monai=False, iters=1, data_iterations=2, val_maps=1, eval_maps=1,
                      emit=emitted.extend, extras=False)
    assert emitted == rows  # each row handed out as it was measured
    step_cases = [r for r in rows if r["case"] == "train_step"]
    assert len(step_calls) == sum(r["warmup_used"] + r["iters"] for r in step_cases) + DATA_PATH_WARMUP + 2 * 2
    cases = [r["case"] for r in rows]
    assert cases[:6] == ["train_step"] * 6 and cases[6] == "data_path"  # the decisive rows first
    assert cases.count("validation") == 6 and cases.count("evaluation") == 6
    assert {"memory", "evaluation_shared", "validation_fraction", "projection"} <= set(cases)
    assert all(not r.get("error") for r in rows), [r.get("error") for r in rows]
    data = next(r for r in rows if r["case"] == "data_path")
    assert data["seconds_per_iter"] > 0 and data["ratio"] == pytest.approx(data["seconds_per_iter"] / data["bare_seconds_per_iter"])
    validation = next(r for r in rows if r["case"] == "validation")
    assert validation["maps_kept"] == "CPU memory" and validation["seconds_per_epoch"] == pytest.approx(
        validation["seconds_per_map"] * Config.from_profile("smoke").n_val)
    projection = next(r for r in rows if r["case"] == "projection")
    assert projection["variants"] == 6 and projection["value"] > 0 and all(r["card"].startswith("cpu: ") for r in rows)
    assert set(projection["per_variant"]) == {f"{a}{c}" for a, c in registry.PAPER_VARIANTS}


def _measured(variants=("elu16", "elu32")) -> list[dict]:
    """Hand-made rows of the kinds the projection reads."""
    rows = [make_row(case="train_step", variant=v, seconds_per_iter=0.1 * (i + 1), default_setting=True)
            for i, v in enumerate(variants)]
    rows += [make_row(case="train_step", variant="elu16", seconds_per_iter=0.01, default_setting=True, cudnn_benchmark=True),
             make_row(case="train_step", variant="elu16", seconds_per_iter=9.0, default_setting=False)]
    rows.append(make_row(case="data_path", seconds_per_iter=0.105, bare_seconds_per_iter=0.1))
    rows += [make_row(case="validation", variant=v, seconds_per_epoch=4.0 + i, render_seconds_per_map=0.05)
             for i, v in enumerate(variants)]
    rows += [make_row(case="evaluation", variant=v, seconds_per_map=0.2 + 0.1 * i) for i, v in enumerate(variants)]
    rows.append(make_row(case="evaluation_shared", noise_seconds_per_map=0.01, baseline_seconds_per_map=0.02,
                         baseline_search_seconds=600.0))
    return rows


def test_the_projection_adds_training_validation_evaluation_and_report_per_variant(tmp_path):
    from qsmrep.bench.projection import CHECKPOINTS, REPORT_STEPS, projection_rows

    for i, step in enumerate(REPORT_STEPS):
        (tmp_path / f"{step}.tsv").write_text(f"s\th:m:s\n{99.0}\t0\n{float(i + 1)}\t0\n")  # the latest row counts
    fraction, projection = projection_rows("paper", _measured(), tmp_path)
    c = Config.from_profile("paper")
    epoch16 = c.iterations * (0.1 + 0.005) + 4.0  # the cuDNN and fp32 rows are not the run's setting
    hours16 = (c.epochs * epoch16 + c.n_val * 0.05 + CHECKPOINTS * ((2 * c.n_test + 1) * 0.2 + c.n_test * 0.01)) / 3600
    assert projection["per_variant"]["elu16"]["hours"] == pytest.approx(hours16)
    assert projection["per_variant"]["elu16"]["epoch_seconds"] == pytest.approx(epoch16)
    shared = c.n_test * 0.05 + 2 * ((2 * c.n_test + 1) * 0.02 + c.n_test * 0.01) + 600.0 + sum(range(1, 7))
    assert projection["shared_hours"] == pytest.approx(shared / 3600)
    assert projection["value"] == pytest.approx(sum(v["hours"] for v in projection["per_variant"].values()) + shared / 3600)
    assert projection["meets_target"] == (projection["value"] <= 6.0)
    assert fraction["value"] == pytest.approx(max(4.0 / epoch16, 5.0 / projection["per_variant"]["elu32"]["epoch_seconds"]))
    missing = projection_rows("paper", [r for r in _measured() if r["case"] != "data_path"], tmp_path)
    assert missing[0]["error"] == "missing rows: data_path"


def test_a_failing_part_keeps_the_rows_before_it_and_the_run_goes_on():
    from qsmrep.bench.paper import _CardRows

    def two_then_boom():
        yield make_row(case="validation", variant="elu16")
        raise RuntimeError("CUDA out of memory")

    out = _CardRows("smoke", "cpu")
    out.part("validation", two_then_boom)
    out.part("memory", lambda: [make_row(case="memory")])
    assert [r["case"] for r in out.rows] == ["validation", "validation", "memory"]
    assert out.rows[1]["error"] == "RuntimeError: CUDA out of memory" and not out.rows[2].get("error")


def test_saved_rows_are_written_as_each_is_measured(tmp_path):
    path = tmp_path / "card-date.jsonl"
    log = cli.RowLog(json_lines=False, save=str(path))
    for k in range(3):
        log([make_row(case="train_step", variant=f"v{k}")])
        assert [json.loads(line)["variant"] for line in path.read_text().splitlines()] == [f"v{i}" for i in range(k + 1)]
    assert cli.save_path(SimpleNamespace(save=str(tmp_path)), "NVIDIA H200").startswith(str(tmp_path / "NVIDIA-H200-"))
    assert cli.save_path(SimpleNamespace(save=False), "NVIDIA H200") is None


def test_bench_help():
    result = subprocess.run([sys.executable, "-m", "qsmrep", "bench", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for option in ("--profile", "--quick", "--json", "--no-monai", "--paper-rows", "--save", "--breakdown"):
        assert option in result.stdout
    for said in ("data path", "validation", "evaluation", "projected wall time"):  # what --profile paper measures
        assert said in " ".join(result.stdout.split())


def test_step_specs_cover_the_six_variants_and_four_settings():
    specs = plan.step_specs("cpu", quick=False, device="cpu")
    assert len(specs) == 24 and {s.variant for s in specs} == {"relu16", "relu32", "leaky_relu16", "leaky_relu32",
                                                                 "elu16", "elu32"}
    assert all(s.patch == 32 and s.batch == 4 and s.depth == 5 for s in specs)
    assert torch.get_num_threads() >= 1


def test_a_failing_case_gives_an_error_row():
    row = steps.run_step_case(StepSpec(**{**TINY, "model": "nope"}))
    assert "ValueError" in row["error"] and row["seconds_per_iter"] is None
    assert "ERROR" in cli.summary_table([row])


def test_quick_comparison_plan_runs_the_fastest_setting_at_48():
    done = [make_row(case="train_step", variant=f"elu{c}", patch=32, precision=p, memory_format=m, seconds_per_iter=s)
            for c in (16, 32) for p, m, s in (("fp32", "contiguous", 2.0), ("bf16", "channels_last_3d", 1.0))]
    specs = plan.comparison_specs("cpu", quick=True, device="cpu", done=done)
    ours = [(s.variant, s.patch, s.setting) for s in specs if s.model == "qsmrep"]
    monai = [(s.variant, s.patch) for s in specs if s.model == "monai"]
    assert ours == [("elu16", 48, "bf16/channels_last_3d"), ("elu32", 48, "bf16/channels_last_3d")]
    assert monai == [("elu16", 32), ("elu16", 48), ("elu32", 32), ("elu32", 48)]


def test_bench_generator_reports_seconds_per_map():
    (row,) = data.bench_generator(sizes=(16,), repeats=1, batch=2)
    assert row["size"] == 16 and row["batch"] == 2 and row["device"] == "cpu"
    assert 0 < row["seconds_min"] <= row["seconds_mean"] and row["seconds_first"] > 0


def test_forkserver_preload_names_importable_modules():
    for name in steps.PRELOAD:
        assert importlib.util.find_spec(name) is not None, name


BENCH = pathlib.Path(qsmrep.bench.__file__).parent
LAYERS = ("qsmrep.registry", "qsmrep.core", "qsmrep.run", "qsmrep.study", "qsmrep.bench")  # what bench may import


def _qsmrep_imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {name for name in names if name.split(".")[0] == "qsmrep"}


def test_bench_imports_point_downward_and_form_no_cycle():
    modules = {f"qsmrep.bench.{p.stem}": p for p in BENCH.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for module, path in modules.items():
        imports = _qsmrep_imports(path)
        assert all(name == "qsmrep" or name.startswith(LAYERS) for name in imports), (module, imports)
        graph[module] = {name for name in imports if name in modules and name != module}
    done: set[str] = set()

    def visit(module, trail):
        assert module not in trail, f"import cycle: {' -> '.join([*trail, module])}"
        if module not in done:
            for name in graph[module]:
                visit(name, [*trail, module])
            done.add(module)

    for module in graph:
        visit(module, [])


def test_bench_modules_and_functions_stay_small():
    for path in BENCH.glob("*.py"):
        source = path.read_text()
        assert len(source.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, (path, node.name)


def test_cpu_peak_is_cores_times_clock_times_the_best_instruction():
    from qsmrep.bench.cpu_peak import cpu_peak

    amx = "processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    zen4 = amx.replace(" amx_bf16 amx_tile", "")
    avx2 = "cpu MHz\t\t: 3000.000\nflags\t\t: fpu avx2 fma\n"
    assert cpu_peak("bf16", amx, cores=2)["peak_tflops"] == pytest.approx(2 * 2.6e9 * 2048 / 1e12)
    assert cpu_peak("fp32", amx, cores=2)["peak_tflops"] == pytest.approx(2 * 2.6e9 * 64 / 1e12)
    assert cpu_peak("bf16", zen4, cores=2)["peak_tflops"] == pytest.approx(2 * 2.6e9 * 128 / 1e12)
    assert cpu_peak("bf16", avx2, cores=1)["peak_basis"] == "1 cores × 3.00 GHz × 32 FLOP/cycle (avx2)"
    assert cpu_peak("fp32", "flags\t: avx2\n") is None  # no clock: no peak rather than a guess


def _step(variant, precision, memory_format, seconds):
    return make_row(case="train_step", variant=variant, patch=32, precision=precision, memory_format=memory_format,
                    seconds_per_iter=seconds, voxels_per_s=4 * 32**3 / seconds, gflops_per_s=45 / seconds,
                    peak_mem_mb=900.0)


def test_default_step_row_sets_the_adopted_elu16_step_beside_fp32_with_the_guards_verdict(monkeypatch):
    """The row takes ELU 16 in the setting resolve() adopts (bf16 + channels-last where the guard passes, else
    fp32), puts the fp32 step of the same rows beside it and judges the cpu profile's 0.10 s target."""
    from qsmrep.bench import headline

    monkeypatch.setattr(headline.runtime, "cpu_native_bf16", lambda: True)
    rows = [_step("elu16", "fp32", "contiguous", 0.28), _step("relu16", "bf16", "channels_last_3d", 0.05),
            _step("elu16", "bf16", "contiguous", 0.2), _step("elu16", "bf16", "channels_last_3d", 0.14)]
    monkeypatch.setattr(headline.runtime, "cpu_bf16_sound", lambda: True)
    (row,) = headline.default_step_rows(rows, "cpu", "cpu")
    assert (row["case"], row["precision"], row["memory_format"]) == ("default_step", "bf16", "channels_last_3d")
    assert row["seconds_per_iter"] == 0.14 and row["fp32_seconds_per_iter"] == 0.28
    assert row["speedup_vs_fp32"] == pytest.approx(2.0) and row["target"] == 0.10 and row["meets_target"] is False
    assert row["guard"].startswith("passed") and "fp32 0.280 s/iter" in row["unit"]
    rows[-1]["seconds_per_iter"] = 0.09
    assert headline.default_step_rows(rows, "cpu", "cpu")[0]["meets_target"] is True
    assert headline.default_step_rows(rows, "smoke", "cpu")[0]["target"] is None  # no target at smoke scale

    monkeypatch.setattr(headline.runtime, "cpu_bf16_sound", lambda: False)
    (row,) = headline.default_step_rows(rows, "cpu", "cpu")
    assert (row["precision"], row["seconds_per_iter"]) == ("fp32", 0.28) and row["guard"].startswith("failed")
    assert headline.default_step_rows(rows[1:2], "cpu", "cpu") == []  # ELU 16 not timed: no row


def test_breakdown_accounts_for_the_whole_profiled_step():
    """The categories' self CPU times add up to the profiled step's wall time (the backward pass runs on the calling
    thread on a CPU, so every operation's self time lies inside the step and none is counted twice), and the step's
    parts each land in their own category: the convolutions forward and backward, batch normalisation, ELU, the
    loss's dipole FFTs and AdamW."""
    from qsmrep.bench.breakdown import breakdown_rows, breakdown_table

    spec = StepSpec(**{**TINY, "depth": 3, "warmup": 2})
    rows = breakdown_rows(spec, iters=3)
    shares = {r["category"]: r["share"] for r in rows}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert [r["ms_per_iter"] for r in rows] == sorted((r["ms_per_iter"] for r in rows), reverse=True)
    for part in ("convolution forward", "convolution backward", "normalisation", "activation", "dipole FFTs (loss)",
                 "optimiser (AdamW)"):
        assert shares.get(part, 0) > 0, part
    step_ms = 1000 * rows[0]["seconds_per_iter"]
    total_ms = sum(r["ms_per_iter"] for r in rows)
    assert 0.3 * step_ms < total_ms < 1.5 * step_ms, (total_ms, step_ms)
    by_category = {r["category"]: r["top_ops"] for r in rows}
    assert "aten::elu" in by_category["activation"] and "convolution_backward" in by_category["convolution backward"]
    assert "_fft_" in by_category["dipole FFTs (loss)"]
    table = breakdown_table(rows)
    assert table.startswith("elu4, batch 2 x 16^3, fp32/contiguous") and table.count("\n") == len(rows)


def test_breakdown_categories_by_name_and_caller():
    from qsmrep.bench.breakdown import OPTIMISER, OTHER, category

    assert category("aten::threshold_backward") == category("aten::leaky_relu") == "activation"  # ReLU's backward
    assert category("aten::linalg_vector_norm") == OTHER  # gradient clipping is not a normalisation layer
    assert category("aten::native_batch_norm_backward") == "normalisation"
    assert category("aten::mkldnn_convolution") == "convolution forward"
    assert category("aten::copy_") == "casts and layout copies"
    assert category("aten::copy_", ("aten::_foreach_copy_", "Optimizer.step#AdamW.step")) == OPTIMISER


def test_breakdown_specs_profile_the_adopted_setting_and_fp32(monkeypatch):
    from qsmrep.bench.breakdown import breakdown_specs
    from qsmrep.run import runtime

    monkeypatch.setattr(runtime, "resolve", lambda c: c.replace(precision="bf16", memory_format="channels_last",
                                                                compile="off"))
    adopted, plain = breakdown_specs("cpu", "cpu")
    assert (adopted.variant, adopted.batch, adopted.patch, adopted.setting) == ("elu16", 4, 32, "bf16/channels_last_3d")
    assert plain.setting == "fp32/contiguous" and breakdown_specs("cpu", "cpu", quick=True) == [adopted]
