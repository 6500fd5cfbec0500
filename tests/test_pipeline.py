"""pipeline.py: the stages' commands and graph, the scheduler (dependency order, every core for a job that runs
alone, the first failure named), and its tables rendered by hand."""
import os
import subprocess
import sys

import pytest

import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a job: fail unless the files of the jobs it needs exist, then write its OMP_NUM_THREADS to a file of its name
JOB = ("import os, sys; assert all(os.path.exists(n) for n in sys.argv[2:]), 'started too early'; "
       "open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS'])")


def job(key, needs=()):
    return key, ["-c", JOB, key, *needs], list(needs)


def test_jobs_run_after_what_they_need_and_alone_get_every_core(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    times = {}
    pipeline.run_jobs([job("a"), job("b", ["a"]), job("c", ["a"]), job("d", ["b", "c"])], 2, times, "runs/logs")
    threads = {k: (tmp_path / k).read_text() for k in "abcd"}
    assert threads == {"a": "2", "b": "1", "c": "1", "d": "2"}  # b and c share the cores; a and d run alone
    assert set(times) == set("abcd") and (tmp_path / "runs/logs/a.log").exists()


def test_a_failed_job_stops_the_pipeline_and_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    with pytest.raises(SystemExit, match=r"bad failed \(exit 1\); see .*bad\.log"):
        pipeline.run_jobs([job("ok"), ("bad", ["-c", "raise SystemExit(1)"], []), job("after", ["bad"])], 2, {},
                          "runs/logs")
    assert not (tmp_path / "after").exists()


def test_plan_commands_read_and_write_under_runs_with_the_seeds():
    """Every stage reads the world and starts from the stage STAGES names, all under --runs; the base model
    gets --base-seed, every later stage --seed; --base replaces the base model everywhere."""
    plan = pipeline.Plan("runs/s2", seed=2, base_seed=1)
    assert plan.command("world") == ["-m", "data.build", "--out", "runs/s2/world"]
    assert plan.command("base") == ["pretrain.py", "--data", "runs/s2/world", "--out", "runs/s2/base", "--seed", "1"]
    assert plan.command("rl") == ["grpo.py", "--sim-ratio", "5", "--data", "runs/s2/world", "--out", "runs/s2/rl",
                                  "--init", "runs/s2/sft3", "--seed", "2"]
    assert plan.command("workflow")[-6:] == ["--out", "runs/s2/workflow", "--init", "runs/s2/base", "--seed", "2"]
    shared = pipeline.Plan("runs/s2", seed=2, base="runs/base")
    assert shared.command("sft1")[shared.command("sft1").index("--init") + 1] == "runs/base"
    assert shared.path("corpus_cf") == "runs/s2/world/corpus_cf.jsonl"
    assert shared.eval_file("SFT-1&2, shuffled pages") == "runs/s2/eval/SFT-1+2_shuffled_pages.jsonl"
    # with a base model given, no base job, and every job still waits for the world its data comes from
    todo = pipeline.jobs(shared, limit=None, batch_size=8, skip_train=False)
    needs = {key: n for key, _, n in todo}
    assert "base" not in needs and needs["world"] == [] and needs["sft1"] == ["world"]
    assert all("world" in n for key, n in needs.items() if key != "world")


def test_build_runs_only_what_the_target_needs(tmp_path, monkeypatch):
    """`pipeline.py --build OUT` (what a stage script runs when its default input is missing): OUT and the
    chain before it, nothing else, no evaluation; outputs that already have a checkpoint are skipped."""
    assert pipeline.needed("sft2") == {"world", "base", "sft1", "sft2"}
    assert pipeline.needed("rl") == {"world", "base", "sft1", "sft2", "sft3", "rl"}
    assert pipeline.needed("workflow") == {"world", "base", "workflow"}
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    (tmp_path / "runs/world").mkdir(parents=True)
    (tmp_path / "runs/world/meta.json").write_text("{}")  # the world exists: not rebuilt
    todo = pipeline.jobs(pipeline.Plan(), 0, 0, False, only=pipeline.needed("sft1"))
    assert [(k, needs) for k, _, needs in todo] == [("base", []), ("sft1", ["base"])]
    assert all("--overwrite" in cmd for _, cmd, _ in todo)
    # a whole run: every stage but the world (it exists), every Table-1 row, every reading check and the probes,
    # each after what it evaluates
    todo = pipeline.jobs(pipeline.Plan(), 0, 64, False)
    keys = [k for k, _, _ in todo]
    assert len(keys) == len(set(keys)) == len(pipeline.STAGES) - 1 + len(pipeline.ROWS) + len(pipeline.CHECKS) + 3 + len(pipeline.DECIDERS)
    decision = next(cmd for k, cmd, needs in todo if k == "decision SFT-1" and needs == ["sft1"])
    assert decision[decision.index("--out") + 1] == "runs/eval/decision-sft1.jsonl"
    assert all(set(needs) <= set(keys[:keys.index(k)]) for k, _, needs in todo)
    rl = [k for k in keys if k == "rl" or k.startswith("rl2")]  # every RL model is evaluated: no validation run
    assert len(rl) == 3 and all(cmd[cmd.index("--val-prompts") + 1] == "0" for k, cmd, _ in todo if k in rl)
    layout = next(cmd for k, cmd, _ in todo if k == "eval SFT-2, split pages")
    assert layout[layout.index("--search") + 1] == "runs/world/corpus_split.jsonl" and "--limit" in layout


def test_table_rows_by_hand():
    def summary(name, em, w=None, rl_calls=0, known=None):
        b = {"n": 4, "em": em, "em_ci": [em - 0.25, em + 0.25], "f1": em, "searches": 1.25}
        held = {"held-out": b, **({"known only": {**b, "searches": known}} if known is not None else {})}
        return {"name": name, "overall": b, "by_hops": {"1": b, "2": {"n": 0}}, "when_to_act": w,
                "by_type": {"comparison": {"n": 0}}, "by_held_out": held, "rl_real_search_calls": rl_calls}
    w = {"search_known": 0.01, "search_unknown": 0.984, "accuracy": 0.99, "n_known_not_in_sft": 2,
         "search_known_not_in_sft": 0.5, "n_known_in_sft": 6, "search_known_in_sft": 0.0}
    follows = {"n_solved": 10, "follows_corpus": 0.9, "follows_memory": 0.05}
    checks = [{"name": "SFT-2, counterfactual corpus", "model": "SFT-2", "overall": summary("x", 0.5)["overall"],
               "follows": follows, "reading": None},
              {"name": "SFT-2, shuffled pages", "model": "SFT-2", "overall": summary("x", 0.75)["overall"],
               "layout": "shuffled", "paired": {"n": 4, "diff": -0.25, "ci": [-0.5, 0.0]},
               "reading": {"n": 10, "copied": 0.9}}]
    probe = {"probe": {"questions": 3, "unparsed": 0, "train": {"actions": 4, "right": 1, "wrong": 2, "absent": 1}},
             "copy": {"split": "test", "values": 8, "copied": 6, "by_relation": {"author": [1, 2], "mayor": [5, 6]}},
             "decision-sft1": {"known": {"searches": 0.25, "margin": -1.5, "greedy": 0.0, "cases": 4},
                               "train": {"searches": 1.0, "margin": 2.0, "greedy": 0.5, "cases": 4},
                               "test": {"searches": 0.75, "margin": 0.5, "greedy": 0.75, "cases": 4},
                               "known, not in SFT": {"searches": 0.5, "margin": 0.0, "greedy": 0.5, "cases": 2},
                               "linear_probe_balanced_accuracy": 0.875}}
    pairs = [{"a": "SFT-2", "b": "no tool", "n": 4, "diff": 0.25, "ci": [-0.25, 0.5]}]
    sft2 = {**summary("SFT-2", 0.5, w, known=0.5), "comparison_steps": {"n": 8, "years": 1.0, "decision": 0.625,
                                                                        "name": 1.0, "searched": 0.25},
            "reading": {"n": 12, "copied": 0.75}}
    lines = pipeline.table([sft2, summary("no tool", 0.25, rl_calls=None)], checks, pairs, probe).split("\n")
    assert lines[0].count("|") == lines[2].count("|") == lines[3].count("|") == 13
    assert lines[2] == "| SFT-2 | 50.0 [25.0, 75.0] | 50.0 | 50.0 | 50.0 | - | - | - | - | 1.25 | 0 | 29.5 |"
    assert lines[3] == "| no tool | 25.0 [0.0, 50.0] | 25.0 | - | 25.0 | - | - | - | - | 1.25 | 0 | 11.8 |"
    assert "| SFT-2 | 1.0% | 98.4% | 0.50 | 0.0% of 6 | 50.0% of 2 |" in lines  # when to act: only rows that have it
    assert "| SFT-2 | 75.0 (-25.0 [-50.0, +0.0]) | 75.0% / 90.0% |" in lines
    assert "| SFT-2 | 4 | 50.0 [25.0, 75.0] | 90.0% / 5.0% (of 10) |" in lines
    assert "| train entities | 4 | 25.0% / 50.0% / 25.0% |" in lines
    assert "| SFT-2 | 8 | 100.0 | 62.5 | 100.0 | 25.0 |" in lines  # only rows with comparison steps
    assert ("base model, teacher-forced (probe.py --copy): copies out of a search result (train entities, whose pages "
            "no base text holds) 6 of 8 values (75.0%); fewest by relation: author 1/2, mayor 5/6") in lines
    assert "| SFT-1 | 0.0% / 50.0% / 75.0% | 25.0% / 100.0% / 75.0% | -1.50 / +2.00 / +0.50 | 0.88 | 50.0% of 2 |" in lines
    assert sum(line.startswith("| no tool |") for line in lines) == 1
    assert lines[-1] == "| SFT-2 - no tool | +25.0 [-25.0, +50.0] |"


def test_known_first_steps_by_hand():
    records = [{"id": "a", "first_known": True, "first_step_search": True},
               {"id": "b", "first_known": True, "first_step_search": False},
               {"id": "c", "first_known": True, "first_step_search": False},
               {"id": "d", "first_known": False, "first_step_search": True},
               {"id": "e", "first_known": None, "first_step_search": True}]
    assert pipeline.known_first_steps(records, {"a", "d"}) == {"n_known_in_sft": 2, "search_known_in_sft": 0.0,
                                                               "n_known_not_in_sft": 1, "search_known_not_in_sft": 1.0}
    assert pipeline.known_first_steps(records, set())["search_known_not_in_sft"] is None


def test_across_runs_by_hand(tmp_path, monkeypatch):
    """`pipeline.py --across RUNS...`: one row per run from its summaries.json, the best agent (highest EM from
    SFT-2 on) paired with the workflow from the two evaluations' records."""
    import json
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    (tmp_path / "r/eval").mkdir(parents=True)
    ems = {"workflow": 1.0, "SFT-2": 0.5, "SFT-1&2": 0.5, "SFT-1&2&3": 0.25, "SFT-1&2&3 + RL-1&2": 0.5,
           "SFT-1&2 + RL-2": 0.75}
    calls = {"SFT-1&2&3 + RL-1&2": 7, "SFT-1&2 + RL-2": 40}
    rows = [{"name": n, "overall": {"em": em, "searches": 1.5}, "by_type": {"comparison": {"em": em}},
             "rl_real_search_calls": calls.get(n, 0),
             "when_to_act": {"search_known": 0.125, "search_unknown": 1.0, "n_known_not_in_sft": 4,
                             "search_known_not_in_sft": 0.75, "n_known_in_sft": 0}} for n, em in ems.items()]
    pair = lambda a, b, d: {"a": a, "b": b, "n": 4, "diff": d, "ci": [d, d]}  # noqa: E731
    checks = [{"name": f"{n}, split pages", "model": n, "layout": "split", "paired": {"diff": d}}
              for n, d in (("SFT-2", -0.05), ("SFT-1&2", -0.2), ("workflow", -0.5))]
    checks += [{"name": f"{n}, counterfactual corpus", "model": n, "follows": {"follows_corpus": f}}
               for n, f in (("SFT-2", 0.9), ("SFT-1&2", 1.0))]
    summaries = {"summaries": rows, "checks": checks, "seed": 1, "base_seed": 0, "base": "runs/b", "wall_seconds": 90,
                 "pairs": [pair("SFT-1&2&3 + RL-1&2", "SFT-1&2 + RL-2", -0.25), pair("SFT-1&2", "SFT-2", 0.0),
                           pair("SFT-1&2&3", "SFT-1&2", -0.25)],
                 "probe": {"copy": {"values": 8, "copied": 6, "by_relation": {"author": [1, 2], "mayor": [5, 6]}},
                           "decision-sft2": {"known": {"greedy": 0.125}, "known, not in SFT": {"greedy": 0.5}}}}
    (tmp_path / "r/eval/summaries.json").write_text(json.dumps(summaries))
    for name, em in (("workflow", [1, 1, 1, 1]), ("SFT-1&2 + RL-2", [1, 1, 0, 1])):
        with open(tmp_path / pipeline.Plan("r").eval_file(name), "w") as f:
            f.writelines(json.dumps({"id": i, "em": e}) + "\n" for i, e in enumerate(em))
    lines = pipeline.across(["r"]).split("\n")
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|") == 16
    cells = [c.strip() for c in lines[2].split("|")[1:-1]]
    assert cells[:3] == ["r", "runs/b / 1", "100.0"]
    assert cells[3] == "SFT-1&2 + RL-2 75.0, 1.50 (workflow 1.50)"
    assert cells[4].startswith("-25.0 [")  # paired on the records: one question of four lost
    assert cells[5:10] == ["-25.0 [-25.0, -25.0] (7 / 40)", "+0.0 [+0.0, +0.0]", "-25.0 [-25.0, -25.0]",
                          "12.5% / 100.0% (- / 75.0% of 4)", "12.5% / 50.0%"]
    assert cells[10:] == ["25.0-75.0", "90.0-100.0%", "split -20.0", "6/8, author 1/2", "1.5"]  # workflow left out


def test_unrehearsed_questions_start_from_a_known_fact_no_sft_text_recalls(tmp_path, monkeypatch):
    import json
    from data.trajectories import recall
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    world_dir = tmp_path / "runs/world"
    world_dir.mkdir(parents=True)
    entities = [{"name": "Ab Cd", "known": True, "split": "known", "facts": {"birth year": 1500, "employer": "Ef Gh"}},
                {"name": "Ef Gh", "known": False, "split": "test", "facts": {"founder": "Ab Cd"}}]
    lookups = {"test-0": [["Ab Cd", "birth year"]], "test-1": [["Ab Cd", "employer"], ["Ef Gh", "founder"]],
               "test-2": [["Ef Gh", "founder"]]}
    (world_dir / "world.json").write_text(json.dumps({"entities": entities, "question_lookups": lookups}))
    (world_dir / "stage2.jsonl").write_text(json.dumps({"segments": [{"text": recall("Ab Cd", "birth year", 1500)}]}))
    (world_dir / "stage1.jsonl").write_text("")
    assert pipeline.unrehearsed_questions(pipeline.Plan()) == {"test-1"}  # test-2 starts from an unknown entity
    (world_dir / "stage1.jsonl").unlink()
    assert pipeline.unrehearsed_questions(pipeline.Plan()) is None


@pytest.mark.parametrize("script", ["pretrain.py", "probe.py"])
def test_help_shows_the_defaults_that_will_run(script):
    """--help works with nothing else given (probe.py's required --ckpt included) and shows each default."""
    p = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert {"pretrain.py": "optimizer steps (default: 2000)", "probe.py": "(default: dev)"}[script] in text
