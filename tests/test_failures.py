"""The onerror handler's reading of failed jobs (repexp.failures) on hand-made Snakemake logs."""

from __future__ import annotations

from repexp.failures import explain, report

SLURM_LOG = """\
rule hog:
    jobid: 3
    resources: mem_mb=1000
Job 3 has been submitted with SLURM jobid 11 (log: {d}/slurm/11.log).
Error in rule hog:
    message: SLURM-job '11' failed, SLURM status is: 'FAILED'. Detailed failure reason unavailable.
    jobid: 3
    log: {d}/slurm/11.log (check log file(s) for error details)
    external_jobid: 11
Trying to restart job 3.
Job 3 has been submitted with SLURM jobid 12 (log: {d}/slurm/12.log).
Error in rule slow:
    message: SLURM-job '13' failed, SLURM status is: 'TIMEOUT'.
    jobid: 4
    log: {d}/slurm/13.log (check log file(s) for error details)
Error in rule hog:
    message: SLURM-job '12' failed, SLURM status is: 'FAILED'.
    jobid: 3
    log: {d}/slurm/12.log, logs/hog.log (check log file(s) for error details)
Error in rule flaky:
    message: SLURM-job '14' failed, SLURM status is: 'FAILED'.
    jobid: 5
    log: {d}/slurm/14.log (check log file(s) for error details)
Trying to restart job 5.
Finished jobid: 5 (Rule: flaky)
Error in rule plain:
    jobid: 6
    log: logs/plain.log (check log file(s) for error details)
"""


def _write(tmp_path):
    (tmp_path / "slurm").mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "slurm" / "11.log").write_text(
        "    resources: mem_mb=1000\nslurmstepd: error: Exceeded job memory limit\n"
    )
    (tmp_path / "slurm" / "12.log").write_text(
        "  Command: snakemake --attempt 2 --directory /tmp/test_out_of_memory\n"
        "  Working directory: /tmp/OUT_OF_MEMORY-looking/path\n"
        "    resources: tmpdir=<TBD>, mem_mb=2000, mem=2 GB\n"
        "slurmstepd: error: StepId=12.0 exceeded memory limit (2600000000 > 2097152000), "
        "being killed\n"
    )
    (tmp_path / "slurm" / "13.log").write_text(
        "slurmstepd: error: *** JOB 13 ON n1 CANCELLED DUE TO TIME LIMIT ***\n"
    )
    (tmp_path / "logs" / "plain.log").write_text("ValueError: something else\n")
    log = tmp_path / "run.log"
    log.write_text(SLURM_LOG.format(d=tmp_path))
    return log


def test_final_failures_with_their_causes(tmp_path):
    got = {
        f.rule: f
        for f in explain([str(tmp_path / "older.log"), _write(tmp_path)], workdir=tmp_path)
    }
    # flaky failed once, was restarted and finished: not a failure; hog's first attempt is
    # superseded
    assert sorted(got) == ["hog", "plain", "slow"]
    hog = got["hog"]
    assert (hog.cause, hog.job, hog.mem_mb, hog.attempt) == ("memory", "12", 2000, 2)
    assert hog.evidence.startswith("slurmstepd: error: StepId=12.0 exceeded memory limit")
    assert hog.logs == [str(tmp_path / "slurm" / "12.log"), str(tmp_path / "logs" / "hog.log")]
    assert got["slow"].cause == "time" and got["slow"].evidence == "Slurm status TIMEOUT"
    assert got["plain"].cause is None and got["plain"].job is None
    assert "raise mem_mb of hog" in hog.message() and "mem_mb=2000, attempt 2" in hog.message()
    assert "Raise runtime of slow" in got["slow"].message()
    assert got["plain"].message() == f"rule plain failed: see {tmp_path / 'logs' / 'plain.log'}."


def test_report_prints_one_line_per_rule_and_never_raises(tmp_path, capsys):
    report(_write(tmp_path), workdir=tmp_path)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.startswith("repexp: rule ") for line in lines)
    report(tmp_path / "missing.log")
    assert "could not read the failed jobs' logs" in capsys.readouterr().err
