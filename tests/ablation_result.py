"""The AR ablation's result checked the same way wherever it comes from (the quick benchmark run, a
run of its own)."""

from __future__ import annotations

import math

ARMS = {"without_ar", "with_ar", "with_ar_range_kept", "with_ar_outside_share"}


def assert_ablation_result(result: dict, toys: set[str], seeds: set[str]) -> None:
    """Every toy has every measure for the four arms (finite, attention in [0, 1]) and each seed's values."""
    assert set(result["toys"]) == toys and result["default_arm"] in ARMS - {"without_ar"}
    assert result["arms"]["with_ar_outside_share"]["ar_loss"] == "outside_share"
    assert result["arms"]["with_ar_range_kept"]["ar_detach_range"] is False
    for toy, values in result["toys"].items():
        measures = ["share", "mean_attention", "normalised_outside", "reconstruction", "token_gain"]
        measures += ["reconstruction_twin", "token_selects"] if toy == "twins" else []
        for measure in measures:
            assert set(values[measure]) == ARMS, (toy, measure)
            assert all(math.isfinite(value) for value in values[measure].values()), (toy, measure)
        assert all(0 <= values["share"][arm] <= 1 and 0 <= values["mean_attention"][arm] <= 1 for arm in ARMS)
        assert all(math.isfinite(value) and value > 0 for value in values["reconstruction"].values())
        assert set(values["seeds"]) == seeds and all(set(runs) == ARMS for runs in values["seeds"].values())
