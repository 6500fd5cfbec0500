"""pipeline.py's scheduler: dependency order, every core for a job that runs alone, the first failure named."""
import pytest

import pipeline

# a job: fail unless the files of the jobs it needs exist, then write its OMP_NUM_THREADS to a file of its name
JOB = ("import os, sys; assert all(os.path.exists(n) for n in sys.argv[2:]), 'started too early'; "
       "open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS'])")


def job(key, needs=()):
    return key, ["-c", JOB, key, *needs], list(needs), None


def test_jobs_run_after_what_they_need_and_alone_get_every_core(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    times = {}
    pipeline.run_jobs([job("a"), job("b", ["a"]), job("c", ["a"]), job("d", ["b", "c"])], 2, times)
    threads = {k: (tmp_path / k).read_text() for k in "abcd"}
    assert threads == {"a": "2", "b": "1", "c": "1", "d": "2"}  # b and c share the cores; a and d run alone
    assert set(times) == set("abcd") and (tmp_path / "runs/logs/a.log").exists()


def test_a_failed_job_stops_the_pipeline_and_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    with pytest.raises(SystemExit, match=r"bad failed \(exit 1\); see .*bad\.log"):
        pipeline.run_jobs([job("ok"), ("bad", ["-c", "raise SystemExit(1)"], [], None), job("after", ["bad"])], 2, {})
    assert not (tmp_path / "after").exists()


def test_table_rows_by_hand():
    def summary(name, em, w=None, rl_calls=0):
        b = {"n": 4, "em": em, "em_ci": [em - 0.25, em + 0.25], "f1": em, "searches": 1.25}
        return {"name": name, "overall": b, "by_hops": {"1": b, "2": {"n": 0}}, "when_to_act": w,
                "by_type": {"comparison": {"n": 0}}, "by_held_out": {"held-out": b},
                "rl_real_search_calls": rl_calls}
    w = {"search_known": 0.01, "search_unknown": 0.984, "accuracy": 0.99}
    follows = {"n_solved": 10, "follows_corpus": 0.9, "follows_memory": 0.05}
    checks = [{"name": "SFT-2, counterfactual corpus", "model": "SFT-2", "overall": summary("x", 0.5)["overall"],
               "held_out": {"n": 4, "em": 0.75}, "follows": follows,
               "follows_compositions": {"n_solved": 8, "follows_corpus": 1.0, "follows_memory": 0.0}}]
    probe = {"probe": {"questions": 3, "unparsed": 0, "test": {"actions": 4, "right": 1, "wrong": 2, "absent": 1}},
             "copy": {"split": "test", "values": 8, "copied": 6}}
    pairs = [{"a": "SFT-2", "b": "no tool", "n": 4, "diff": 0.25, "ci": [-0.25, 0.5]}]
    sft2 = {**summary("SFT-2", 0.5, w), "comparison_steps": {"n": 8, "years": 1.0, "word": 0.5, "decision": 0.625,
                                                             "name": 1.0, "searched": 0.25},
            "reading": {"n": 12, "copied": 0.75}}
    lines = pipeline.table([sft2, summary("no tool", 0.25, rl_calls=None)], checks, pairs, probe).split("\n")
    assert lines[0].count("|") == lines[2].count("|") == lines[3].count("|") == 14
    assert lines[2] == "| SFT-2 | 50.0 [25.0, 75.0] | 50.0 | - | 50.0 | - | - | - | - | 1.25 | 0 | 1.0% / 98.4% | 29.5 |"
    assert lines[3] == "| no tool | 25.0 [0.0, 50.0] | 25.0 | - | 25.0 | - | - | - | - | 1.25 | 0 | - | 11.8 |"
    assert ("| SFT-2, counterfactual corpus | 4 | 50.0 [25.0, 75.0] | 75.0 | 90.0% / 5.0% (of 10) "
            "| 100.0% / 0.0% (of 8) |") in lines
    assert "| test entities | 4 | 25.0% / 50.0% / 25.0% |" in lines
    assert "| SFT-2 | 8 | 100.0 | 50.0 | 62.5 | 100.0 | 25.0 |" in lines  # only rows with comparison steps
    assert "| SFT-2 | 12 | 75.0% |" in lines  # only rows with reading lines
    assert "base model, teacher-forced (probe.py --copy): copies 6 of 8 values (75.0%) out of test entities' pages" in lines
    assert sum(line.startswith("| no tool |") for line in lines) == 1
    assert lines[-1] == "| SFT-2 - no tool | +25.0 [-25.0, +50.0] |"


def test_build_runs_only_what_the_target_needs(tmp_path, monkeypatch):
    """`pipeline.py --build OUT` (what a stage script runs when its default input is missing): OUT and the
    chain before it, nothing else, no evaluation; outputs that already have a checkpoint are skipped."""
    assert pipeline.needed("runs/sft2") == {"runs/world", "runs/base", "runs/sft1", "runs/sft2"}
    assert pipeline.needed("runs/rl") == {"runs/world", "runs/base", "runs/sft1", "runs/sft2", "runs/sft3", "runs/rl"}
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    (tmp_path / "runs/world").mkdir(parents=True)
    (tmp_path / "runs/world/meta.json").write_text("{}")  # the world exists: not rebuilt
    todo = pipeline.jobs(0, 0, False, only=pipeline.needed("runs/sft1"))
    assert [(k, needs) for k, _, needs, _ in todo] == [("runs/base", []), ("runs/sft1", ["runs/base"])]
    assert all("--overwrite" in cmd for _, cmd, _, _ in todo)


# a base job: makes runs/base holding the --seed it was given (0 without one)
BASE = ("import os, sys; a = sys.argv; os.makedirs('runs/base', exist_ok=True); "
        "open('runs/base/seed', 'w').write(a[a.index('--seed') + 1] if '--seed' in a else '0')")


@pytest.mark.parametrize("copies, kept, set_aside", [
    ({0: 0.95}, "0", []),                                  # the first seed copies enough
    ({0: 0.5, 1: 0.92}, "1", ["base_seed0"]),              # the second does
    ({0: 0.5, 1: 0.7, 2: 0.6}, "1", ["base_seed0", "base_seed2"]),  # none does: the best copier is kept
])
def test_base_gate_pretrains_the_next_seed_until_one_copies(tmp_path, monkeypatch, copies, kept, set_aside):
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(pipeline, "dev_copies", lambda seed, threads: copies[seed])
    after = ("import sys; assert open('runs/base/seed').read() == sys.argv[1], 'started before the gate'; "
             "open('after', 'w').write('ok')")
    pipeline.run_jobs([("runs/base", ["-c", BASE, "--overwrite"], [], "runs/base"),
                       ("after", ["-c", after, kept], ["runs/base"], None)], 2, {})
    assert (tmp_path / "runs/base/seed").read_text() == kept and (tmp_path / "after").read_text() == "ok"
    assert sorted(p.name for p in (tmp_path / "runs").glob("base_seed*")) == set_aside


def test_base_gate_resumes_with_the_next_seed(tmp_path, monkeypatch):
    """An interrupted gate: runs/base_seed0 was set aside (its dev copy summary beside it); a new pipeline
    pretrains seed 1, and weighs seed 0 by its summary when none passes."""
    monkeypatch.setattr(pipeline, "ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/base_seed0").mkdir(parents=True)
    (tmp_path / "runs/base_seed0/seed").write_text("0")
    (tmp_path / "runs/eval").mkdir()
    (tmp_path / "runs/eval/copy_dev_seed0.summary.json").write_text('{"copy": {"copied": 8, "values": 10}}')
    monkeypatch.setattr(pipeline, "dev_copies", lambda seed, threads: {1: 0.5, 2: 0.6}[seed])
    pipeline.run_jobs([("runs/base", ["-c", BASE, "--overwrite"], [], "runs/base")], 2, {})
    assert (tmp_path / "runs/base/seed").read_text() == "0"  # seeds 1 and 2 copy less than seed 0's 0.8
    assert sorted(p.name for p in (tmp_path / "runs").glob("base_seed*")) == ["base_seed1", "base_seed2"]
