"""The out-of-distribution check on the head phantom: a summary table and a plain statement with the measured
reasons (contrast and support of the phantom against the training maps)."""

from __future__ import annotations

import pandas as pd

from qsmrep.core.phantom import head_phantom
from qsmrep.core.physics import DipolePhysics
from qsmrep.run.data import SyntheticMaps
from qsmrep.study.curves import BLOWUP_NRMSE
from qsmrep.study.summary import BASELINE_MODELS

#: training maps whose contrast and support are compared with the phantom's
COMPARED_MAPS = 8


def contrast_and_support(config) -> dict:
    """χ standard deviation inside the mask (ppm) and mask fraction of the volume, of the phantom and of the mean
    training map (the first :data:`COMPARED_MAPS` of the split)."""
    phantom = head_phantom(config.map_size, DipolePhysics.from_config(config))
    maps = SyntheticMaps.from_config(config, "train", device="cpu", cache=True, n=min(COMPARED_MAPS, config.n_train))
    train_sd = [float(maps[i]["chi"][maps[i]["mask"]].std()) for i in range(len(maps))]
    train_support = [float(maps[i]["mask"].float().mean()) for i in range(len(maps))]
    return {"phantom_sd": float(phantom["chi"][phantom["mask"]].std()), "train_sd": sum(train_sd) / len(train_sd),
            "phantom_support": float(phantom["mask"].float().mean()), "train_support": sum(train_support) / len(train_support)}


def phantom_summary(table: pd.DataFrame, config) -> tuple[str, pd.DataFrame]:
    """(markdown statement, per model at the final epoch: mean and range over seeds of NRMSE and SSIM)."""
    final = table[(table.epoch == config.epochs) | table.model.isin(BASELINE_MODELS)]
    final = final.assign(arm=final.arm.fillna(""))  # the baselines belong to no arm
    summary = final.groupby(["arm", "model"], sort=False).agg(
        seeds=("nrmse", "count"), nrmse=("nrmse", "mean"), nrmse_min=("nrmse", "min"), nrmse_max=("nrmse", "max"),
        ssim=("ssim", "mean")).reset_index().sort_values("nrmse", ignore_index=True)
    networks = summary[~summary.model.isin(BASELINE_MODELS)]
    baselines = summary[summary.model.isin(BASELINE_MODELS)]
    facts = contrast_and_support(config)
    text = ""
    sound = networks[networks.nrmse <= BLOWUP_NRMSE]
    if len(sound) and len(baselines):
        best = baselines.iloc[0]
        verdict = ("the networks do not generalise to it" if sound.nrmse.min() > 1.5 * best.nrmse
                   else "the best networks come close to it")
        blown = len(networks) - len(sound)
        text = (f"On the phantom the networks score {sound.nrmse.min():.1f}–{sound.nrmse.max():.1f} % NRMSE "
                f"(final checkpoints, mean over seeds" + (f"; {blown} blown-up variant(s) above {BLOWUP_NRMSE:g} % aside"
                                                          if blown else "")
                + f") against {best.model}'s {best.nrmse:.1f} %: {verdict}. ")
    text += (f"Measured differences from the training data: the phantom's χ varies with a standard deviation of "
             f"{facts['phantom_sd']:.3f} ppm inside its mask against {facts['train_sd']:.3f} ppm in the training maps "
             f"({facts['train_sd'] / facts['phantom_sd']:.0f}× more), and its support covers "
             f"{100 * facts['phantom_support']:.0f} % of the volume against {100 * facts['train_support']:.0f} %.")
    return text, summary
