"""bnrepro.analysis.compare_verdicts: which verdicts two results folders disagree on."""

from bnrepro.analysis import compare_verdicts as compare
from bnrepro.claims import write_claims

CPU = {"cpu": "CPU A", "cpu_capability": "AVX2", "threads": 2, "cores": 2, "gpu": "none",
       "torch": "2.15.0"}


def results(folder, verdicts: dict[str, str], machine: dict):
    folder.mkdir()
    rows = [{"claim": claim, "paper": "p", "ours": f"ours of {claim} ({verdict})",
             "verdict": verdict, "dataset": "mnist", "source": "ours"}
            for claim, verdict in verdicts.items()]
    write_claims(folder / "x_claims.json", rows, experiment="x", title="t", make="m", setup="s",
                 figures=[], verdict_rule="r", summaries=[{"machine": machine}] * 3)
    return folder


def test_only_the_claims_whose_verdicts_differ_are_listed(tmp_path, capsys):
    a = results(tmp_path / "a", {"same": "holds", "moves": "mixed", "gone": "holds"}, CPU)
    b = results(tmp_path / "b", {"same": "holds", "moves": "does not hold", "new": "holds"},
                dict(CPU, cpu_capability="AVX512"))
    assert compare.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"{a} trained on: CPU A (AVX2), 2 threads of 2 cores, torch 2.15.0" in out
    assert f"{b} trained on: CPU A (AVX512)" in out
    assert "3 of 4 claims differ in verdict" in out
    assert (f"x_claims.json: moves [mnist]\n  {a}: mixed (ours of moves (mixed))\n"
            f"  {b}: does not hold (ours of moves (does not hold))") in out
    assert f"x_claims.json: gone [mnist]\n  only in {a}" in out
    assert f"x_claims.json: new [mnist]\n  only in {b}" in out
    assert "x_claims.json: same" not in out


def test_a_folder_without_claims_is_one_clear_error(tmp_path, capsys):
    a = results(tmp_path / "a", {"c": "holds"}, CPU)
    (tmp_path / "empty").mkdir()
    assert compare.main([str(a), str(tmp_path / "empty")]) == 2
    assert "error: no *_claims.json in" in capsys.readouterr().err
