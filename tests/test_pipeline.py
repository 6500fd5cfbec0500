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
