"""The ``bench`` subcommand's arguments, without the imports of the benchmark itself (torch)."""

from __future__ import annotations


def add_parser(sub) -> None:
    """The ``bench`` subcommand's arguments (``python -m qsmrep bench``)."""
    p = sub.add_parser("bench", help="benchmark training steps, generator and forward field; --profile paper: "
                                      "what ./run_all.sh --profile paper costs on this GPU")
    p.add_argument("--profile", default="cpu",
                   help="profile whose patch size and batch the training-step cases use; paper (needs a GPU): the "
                        "paper-scale rows, decisive first: the six variants' steps at 4 × 160³, the data path "
                        "(iteration with data / bare step), validation per epoch and where its maps are kept, memory "
                        "on the card, evaluation per test map, the projected wall time of training, validation, "
                        "evaluation and report per variant; then fp32 steps, MONAI, generator (on a CPU only the "
                        "320³ generator and forward field)")
    p.add_argument("--paper-rows", action="store_true",
                   help="the rows of --profile paper at this --profile's sizes, on any device (smoke: a rehearsal of "
                        "the GPU check on a CPU)")
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats and cases, bf16 only where native (≤ 5 minutes on 2 cores, any CPU)")
    p.add_argument("--breakdown", action="store_true",
                   help="only a torch.profiler breakdown of the ELU 16 step at the profile's batch and patch: its self "
                        "CPU time by kind of operation (convolution forward and backward, normalisation, activation, "
                        "optimiser, casts, ...), in the setting a run adopts here and in plain fp32 beside it")
    p.add_argument("--json", action="store_true", help="print one JSON object per case")
    p.add_argument("--no-monai", action="store_true", help="skip the MONAI BasicUNet reference")
    p.add_argument("--save", nargs="?", const=True, default=False, metavar="FOLDER",
                   help="also write the rows to results/bench/<card>-<date>.jsonl (or FOLDER), rewritten as each row "
                        "is measured (commit GPU rows; the report shows them)")
