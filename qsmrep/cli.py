"""Command line: ``python -m qsmrep {train,evaluate,predict,phantom,config,status,job,estimate,publish-reference,
shelve,unshelve,offline-html,bench} …``
(``--help`` on each); :data:`COMMANDS` maps each subcommand to the function that runs it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from qsmrep import __version__, registry
from qsmrep.bench import arguments as bench_arguments
from qsmrep.run.config import PROFILES, Config, parse_assignments, read_mapping
from qsmrep.run.noise import TEST_SNR


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _config_from_args(args) -> Config:
    """The profile (``--profile``, else the ``--config`` file's ``profile``, else cpu), then the file's fields,
    then the options and ``--set`` assignments, each over the one before."""
    overrides = {}
    profile = args.profile
    if getattr(args, "config", None):
        overrides.update(read_mapping(args.config))
        profile = profile or overrides.get("profile")
        overrides.pop("profile", None)
    profile = profile or "cpu"
    for name, value in (("activation", args.activation), ("initial_channels", args.channels), ("seed", args.seed),
                        ("epochs", args.epochs), ("precision", args.precision), ("device", args.device),
                        ("norm", args.arm)):
        if value is not None:
            overrides[name] = value
    if args.arm is not None:
        registry.check_choice("arm", args.arm, registry.ARMS)
    if "profile" in parse_assignments(args.set or []):  # typed errors before anything else
        raise ValueError("--set profile=…: choose the profile with --profile NAME")
    overrides.update(item.split("=", 1) for item in args.set or [])  # synth.NAME merges over the file's synth
    return Config.from_profile(profile, **{k.strip(): v.strip() if isinstance(v, str) else v for k, v in overrides.items()})


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help=f"preset to start from: {', '.join(PROFILES)} (default: the --config file's "
                                     "profile, else cpu)")
    p.add_argument("--config", help="a config file (.yaml/.json): its fields override the profile's, the rest stay the "
                                    "profile's; a saved run's config.yaml gives that run")
    from qsmrep.core.unet import ACTIVATIONS

    p.add_argument("--activation", help=f"activation: {', '.join(ACTIVATIONS)} (default: profile's, elu)")
    p.add_argument("--arm", help=f"normalisation arm: {', '.join(registry.ARMS)} (default: {registry.DEFAULT_ARM})")
    p.add_argument("--channels", type=int, help="initial channels of the U-Net (paper: 16 or 32)")
    p.add_argument("--seed", type=int, help="training seed (initialisation, map order, patch positions)")
    p.add_argument("--epochs", type=int, help="number of epochs (paper: 100)")
    p.add_argument("--precision", help="auto (bf16 where the hardware has it natively), fp32 or bf16")
    p.add_argument("--device", help="auto (CUDA if present), cpu or cuda")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override any config field, repeatable (e.g. --set lr=5e-4 --set n_train=100)")


def _add_study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="cpu", help="profile (default: cpu)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds 0..N-1 (default 1)")
    p.add_argument("--arms", default=registry.DEFAULT_ARM,
                   help=f"comma-separated arms: {', '.join(registry.ARMS)} (default: {registry.DEFAULT_ARM})")
    p.add_argument("--extended", action="store_true", help="include the extended activation sweep")
    p.add_argument("--guard", action="store_true", help="include the fp32 twins of the precision guard")
    p.add_argument("--clip", action="store_true", help="include the gradient-clipped twins of the standard U-Net (arm none)")
    p.add_argument("--widths", type=_widths, default=registry.PAPER_CHANNELS,
                   help="initial channels of the twins, e.g. 16 (default: all)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer ≥ 1, got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    try:
        return registry.parse_widths(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_run_commands(sub) -> None:
    p = sub.add_parser("train", help="train one variant (resumes an interrupted run in the same folder)")
    _add_config_options(p)
    p.add_argument("--out", required=True, help="run folder: config.yaml, history.csv, checkpoints")
    p.add_argument("--force", action="store_true", help="discard a previous run in --out and start again")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("evaluate", help="evaluate checkpoints (and TKD/Tikhonov) on the test maps")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoint files (epoch_EEE.pt); label = folder name + epoch")
    p.add_argument("--out", required=True, help="folder for metrics_per_map.csv, metrics_summary.csv, arrays.npz")
    p.add_argument("--n-test", type=int, help="number of test maps (default: the checkpoint's n_test)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-baselines", action="store_true", help="skip TKD and Tikhonov")
    p.add_argument("--snr", type=float, default=TEST_SNR,
                   help=f"field SNR of the noisy test set written beside the noise-free one (default {TEST_SNR:g}; 0: none)")

    from qsmrep.run.geometry import GEOMETRY_MODES
    from qsmrep.run.predict import METHODS

    p = sub.add_parser("predict", help="invert your own field map (NIfTI) with a trained checkpoint (or TKD/Tikhonov) "
                                       "in the frame the network was trained in")
    p.add_argument("--checkpoint", help="checkpoint file (epoch_EEE.pt or last.pt); needed for --method network")
    p.add_argument("--field", required=True, help="3D field map, .nii or .nii.gz (background field removed)")
    p.add_argument("--out", required=True, help="susceptibility map to write (.nii/.nii.gz, ppm, the field's shape "
                                                "and affine), with a JSON sidecar beside it (chi.nii.gz → chi.json)")
    p.add_argument("--mask", help="optional brain mask (.nii/.nii.gz); field and χ are zeroed outside")
    p.add_argument("--units", default="ppm", type=str.lower,
                   help="field units: ppm (default), hz (needs --b0), rad (needs --b0 and --te); any case")
    p.add_argument("--b0", type=float, help="field strength in tesla, for --units hz or rad")
    p.add_argument("--te", type=float, help="echo time in seconds, for --units rad")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("X", "Y", "Z"), help="override the header's voxel size (mm)")
    p.add_argument("--b0-dir", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="override the B0 direction (voxel axes; default: the scanner's z axis from the affine)")
    p.add_argument("--method", default="network", type=str.lower, choices=list(METHODS),
                   help="network (default: the checkpoint's), or the classical tkd or tikhonov")
    p.add_argument("--parameter", type=float, help="TKD threshold or Tikhonov α (default: 0.19 and 0.05)")
    p.add_argument("--geometry", default="resample", choices=GEOMETRY_MODES,
                   help="where B0 is oblique to the training axis or the voxel size is not the training one: "
                        "resample onto the training grid and back (default), or refuse; exact axis permutations and "
                        "flips are always applied")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    p = sub.add_parser("phantom", help="write a head phantom's field, mask and χ as NIfTI in a chosen geometry "
                                       "(to try predict)")
    p.add_argument("--out", required=True, help="folder for field.nii.gz, mask.nii.gz, chi.nii.gz")
    p.add_argument("--size", type=int, default=64, help="voxels per axis (default 64)")
    p.add_argument("--voxel-size", type=float, nargs=3, default=(0.8, 0.8, 1.6), metavar=("X", "Y", "Z"),
                   help="voxel size in mm (default 0.8 0.8 1.6)")
    p.add_argument("--tilt", type=float, default=25.0, help="slab tilt about the first axis, degrees: B0's angle to "
                                                             "the last axis (default 25)")
    p.add_argument("--units", default="ppm", type=str.lower, help="units of the field file: ppm (default), hz, rad")
    p.add_argument("--b0", type=float, help="field strength in tesla, for --units hz or rad")
    p.add_argument("--te", type=float, help="echo time in seconds, for --units rad")

    p = sub.add_parser("config", help="print a profile's resolved configuration as YAML")
    _add_config_options(p)


def _add_study_commands(sub) -> None:
    p = sub.add_parser("status", help="list the study's runs with their state (finished, diverged, partial, empty)")
    _add_study_options(p)
    p.add_argument("--todo", action="store_true", help="only the runs still to train, one key per line, widest first")

    p = sub.add_parser("job", help="one step of the workflow (called by workflow/Snakefile)")
    p.add_argument("step", choices=("train",), help="train: one run of the study, by key")
    p.add_argument("key", help="<kind>/<arm>/<name>_s<seed>, the run's folder below results/<profile>/, "
                               "e.g. runs/batch/elu16_s0")
    p.add_argument("--profile", default="cpu", help="profile (default: cpu)")
    p.add_argument("--force", action="store_true", help="discard the run folder and train from scratch")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs to choose from, one taken per job (default: $QSMREP_GPUS, else 0: none)")

    p = sub.add_parser("estimate", help="print memory and disk estimates for a profile; exit 2 where it cannot fit")
    p.add_argument("--profile", default="paper", help="profile (default: paper)")
    p.add_argument("--seeds", type=_positive_int, default=1, help="seeds per variant")
    p.add_argument("--arms", default=registry.DEFAULT_ARM, help=f"comma-separated arms ({', '.join(registry.ARMS)})")

    p = sub.add_parser("publish-reference", help="copy a finished study's tables, figures and report into the "
                                                 "committed reference/<profile>/ (the only command that writes it)")
    p.add_argument("--profile", default="cpu", help="profile whose results/<profile>/ and figures/<profile>/ are "
                                                    "published (default: cpu)")

    p = sub.add_parser("shelve", help="keep the finished runs of results/<profile>/ in reference/<profile>/trained/ "
                                      "without weights (scoring checkpoints that have no scores record on --device)")
    p.add_argument("--profile", default="cpu", help="profile (default: cpu)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p = sub.add_parser("unshelve", help="restore the study's kept runs that have no folder in results/<profile>/")
    _add_study_options(p)
    p.add_argument("--dry-run", action="store_true", help="only list them")

    p = sub.add_parser("offline-html", help="strip network references from a rendered report")
    p.add_argument("source", help="HTML written by nbconvert")
    p.add_argument("target", help="self-contained HTML to write")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m qsmrep", description="Reproduction of Graf et al., ISMRM 2023 #5188 (QSM U-Net activations).")
    parser.add_argument("--version", action="version", version=f"qsmrep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_commands(sub)
    _add_study_commands(sub)
    bench_arguments.add_parser(sub)
    return parser


def _describe_setting(config: Config) -> None:
    """One line: the device (the CPU's name and ATen capability) and the resolved precision setting."""
    import torch

    from qsmrep.run.runtime import cpu_name, resolve

    resolved = resolve(config)
    if resolved.device == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        where = f"cpu ({cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    print(f"{config.variant}: {where}, precision {resolved.precision}, memory format {resolved.memory_format}",
          flush=True)


def _config(args) -> int:
    print(_config_from_args(args).to_yaml(), end="")
    return 0


def _train(args) -> int:
    from qsmrep.run.runfolder import RunFolder
    from qsmrep.run.trainer import train

    config = _config_from_args(args)
    _describe_setting(config)
    history = train(config, args.out, progress=not args.no_progress, force=args.force)
    done = RunFolder(args.out).done() or {}
    if done.get("status") == "diverged":
        print(f"{config.variant}: diverged at epoch {done['epoch']}, iteration {done['iteration']} "
              f"(recorded in {args.out}/DONE.json)")
    elif len(history):  # under torchrun only rank 0 holds the full history
        last = history.iloc[-1]
        print(f"{config.variant}: {len(history)} epochs, val NRMSE {last['val_nrmse']:.2f} %, run folder {args.out}")
    return 0


def _evaluate(args) -> int:
    from qsmrep.run.evaluate import evaluate_runs, load_model
    from qsmrep.study.plan import checkpoint_label

    checkpoints, config = {}, None
    for path in args.checkpoints:
        _, cfg, epoch = load_model(path)
        config = config or cfg  # the test maps of the first; evaluate_runs refuses checkpoints of other data
        checkpoints[checkpoint_label(cfg.arm, Path(path).resolve().parent.name, epoch)] = path
    if args.n_test is not None:
        config = config.replace(n_test=args.n_test)
    table = evaluate_runs(checkpoints, args.out, config, args.device, baselines=not args.no_baselines,
                          snr=args.snr or None)
    print(table.groupby("label")[["nrmse", "ssim"]].mean().round(3).to_string())
    return 0


def _known_metrics(checkpoint) -> dict:
    """The test NRMSE the metric tables know for ``checkpoint`` (its study's evaluation, the reference's variant)."""
    from qsmrep.run.runfolder import load_checkpoint
    from qsmrep.study.reference import known_test_metrics

    ckpt = load_checkpoint(checkpoint)
    return known_test_metrics(checkpoint, Config.from_dict(ckpt["config"]), int(ckpt["epoch"]))


def _predict(args) -> int:
    from qsmrep.run.predict import predict_nifti, sidecar_path

    notes = _known_metrics(args.checkpoint) if args.method == "network" and args.checkpoint else {}
    record = predict_nifti(args.checkpoint, args.field, args.out, mask_path=args.mask, units=args.units,
                           b0_tesla=args.b0, te_seconds=args.te, voxel_size=args.voxel_size, b0_dir=args.b0_dir,
                           device=args.device, method=args.method, parameter=args.parameter, geometry=args.geometry,
                           model_notes=notes, warn=lambda message: print(message, file=sys.stderr),
                           say=lambda line: print(line, flush=True))
    given = record["geometry"]["input"]
    print(f"wrote {args.out}: shape {tuple(record['output']['shape'])}, voxel size "
          f"{' × '.join(f'{round(v, 3):g}' for v in given['voxel_size_mm'])} mm, B0 "
          f"{given['b0_angle_to_training_axis_deg']:.1f}° off the training axis; what was done: {sidecar_path(args.out)}")
    return 0


def _phantom(args) -> int:
    from qsmrep.run.phantom_nifti import write_phantom

    info = write_phantom(args.out, args.size, args.voxel_size, args.tilt, args.units, args.b0, args.te)
    print(f"wrote {', '.join(str(p) for p in info['paths'].values())}: field in {args.units}, voxel size "
          f"{' × '.join(f'{v:g}' for v in info['voxel_size'])} mm, B0 {info['b0_angle_deg']:.1f}° off the last axis")
    return 0


def _status(args) -> int:
    from qsmrep.run.runfolder import RunFolder
    from qsmrep.study.plan import study_runs

    Config.from_profile(args.profile)
    specs = study_runs(args.profile, registry.parse_arms(args.arms), args.seeds, args.extended, args.guard, args.clip,
                       args.widths)
    if args.todo:  # a sitting that ends mid-training loses that training: the long ones first, in study order
        specs.sort(key=lambda spec: -spec.channels)
    for spec in specs:
        folder = RunFolder(spec.folder())
        if not args.todo:
            print(f"{spec.key}\t{folder.status()}")
        elif not folder.is_finished(spec.config()):
            print(spec.key)
    return 0


def _job(args) -> int:
    from qsmrep.study.jobs import train_job

    gpus = args.gpus if args.gpus is not None else int(os.environ.get("QSMREP_GPUS", "0") or 0)
    return train_job(args.profile, args.key, force=args.force, gpus=gpus)


def _estimate(args) -> int:
    from qsmrep.study.estimate import estimate

    Config.from_profile(args.profile)
    lines, problems = estimate(args.profile, seeds=args.seeds, arms=registry.parse_arms(args.arms))
    print(f"estimate for profile {args.profile}:")
    for line in lines:
        print(f"  {line}")
    if os.environ.get("QSMREP_ALLOW_CPU") == "1":
        problems = [p for p in problems if not p.startswith("no CUDA GPU")]
    if problems:
        raise ValueError("; ".join(problems))
    return 0


def _publish_reference(args) -> int:
    from qsmrep.study.reference import publish

    target = publish(args.profile)
    print(f"published results/{args.profile}/ and figures/{args.profile}/ into {target} (see {target}/PROVENANCE.json); "
          "commit it to change the reference")
    return 0


def _shelve(args) -> int:
    from qsmrep.study.shelf import shelf_dir, shelve

    kept = shelve(args.profile, device=args.device)
    print(f"kept {len(kept)} finished runs in {shelf_dir(args.profile)}/ (no weights); commit it to keep them")
    return 0


def _unshelve(args) -> int:
    from qsmrep.study.plan import study_runs
    from qsmrep.study.shelf import shelf_dir, unshelve

    specs = study_runs(args.profile, registry.parse_arms(args.arms), args.seeds, args.extended, args.guard, args.clip,
                       args.widths)
    Config.from_profile(args.profile)
    if restored := unshelve(args.profile, specs, dry_run=args.dry_run):
        print(f"==> {'would restore' if args.dry_run else 'restored'} {len(restored)} finished runs from "
              f"{shelf_dir(args.profile)}/ (no weights: evaluated from their scores records): {', '.join(restored)}")
    return 0


def _offline_html(args) -> int:
    from qsmrep.run import files
    from qsmrep.study.html import external_references, make_offline

    try:
        source = Path(args.source).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"source: cannot read {args.source!r} ({err.strerror or err})") from None
    html = make_offline(source)
    left = external_references(html)
    if left:
        raise ValueError(f"report still references the network: {left[:3]}")
    files.write_text(args.target, html)
    return 0


def _bench(args) -> int:
    from qsmrep.bench.cli import main as bench_main

    return bench_main(args)


#: subcommand → the function that runs it (ValueError: a one-line error, exit 2)
COMMANDS = {"config": _config, "train": _train, "evaluate": _evaluate, "predict": _predict, "phantom": _phantom,
            "status": _status, "job": _job, "estimate": _estimate, "publish-reference": _publish_reference,
            "shelve": _shelve, "unshelve": _unshelve, "offline-html": _offline_html, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ValueError as err:
        print(f"qsmrep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qsmrep: interrupted; finished epochs are kept, run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141

