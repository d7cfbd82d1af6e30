"""bnrepro.experiments.dln: verdicts follow the runs' numbers."""

import json

from bnrepro.experiments import dln
from bnrepro.run.store import read_metrics
from tests.test_dln import dln_config


def test_the_verdicts_follow_the_numbers(tmp_path):
    from bnrepro.train_dln import train_population

    runs = tmp_path / "runs"
    for norm in ("none", "bn"):
        train_population(dln_config(runs, steps=4, log_every=2, depth=4, samples=32,
                                    seeds=[0, 1], lrs=[1e-4],
                                    **{"measures.landscape.every": 2, "measures.ics.every": 2,
                                       "measures.ics.layers": [1, 3]}), norm)
    verdicts = {}
    for final_loss in (1e-9, 1e9):  # the standard net's final loss, far below / above BN's
        for seed in (0, 1):
            path = runs / f"norm=none,lr=0.0001,seed={seed}" / "metrics.jsonl"
            rows = read_metrics(path.parent)
            rows[-1]["train/loss"] = final_loss
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        out = tmp_path / f"out{final_loss:g}"
        assert dln.main([str(runs), "--out", str(out)]) == 0
        claims = json.loads((out / "dln_claims.json").read_text())["claims"]
        verdicts[final_loss] = claims[0]["verdict"]
        assert f"{final_loss:.3g}" in claims[0]["ours"]
        assert (out / "dln.png").stat().st_size > 10_000
    assert verdicts == {1e-9: "does not hold", 1e9: "holds"}
