"""Why jobs failed, in one line each: the workflow's ``onerror`` handler.

Snakemake's own report of a failed cluster job is the executor's status ("SLURM-job '5' failed,
SLURM status is: 'FAILED'") and a log path. This module reads the logs of the failed jobs and says
what happened and what to do, for the failures that retrying cannot fix: out of memory after the
last attempt (``retries`` in the profile; memory grows with ``attempt``), and the time limit.

``explain(snakemake_log)`` is pure text processing over the log files; ``main`` prints it.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Out of memory, as Slurm (cgroup or jobacct_gather OverMemoryKill), the kernel, Python and torch
# say it (case-sensitive: a path such as tests/test_out_of_memory must not count)
OOM = re.compile(
    r"exceeded memory limit|Exceeded job memory limit|oom[-_]kill|OUT_OF_MEMORY|Out of memory"
    r"|MemoryError|CUDA out of memory|OutOfMemoryError"
)
TIMEOUT = re.compile(r"DUE TO TIME LIMIT|\bTIMEOUT\b")

# Snakemake's header lines (command line, paths) say nothing about the failure
HEADER = re.compile(
    r"^\s+(Command|Snakefile|Base directory|Run directory|Working directory|Config file\(s\)):"
)


@dataclass
class Failure:
    rule: str
    job: str | None  # the cluster job id (None for a local job)
    logs: list[str]
    cause: str | None = None  # "memory" | "time" | None
    evidence: str = ""
    mem_mb: int | None = None
    attempt: int | None = None

    def message(self) -> str:
        where = f"Slurm job {self.job}" if self.job else "the job"
        at = []
        if self.mem_mb is not None:
            at.append(f"mem_mb={self.mem_mb}")
        if self.attempt is not None:
            at.append(f"attempt {self.attempt}")
        at_s = f" ({', '.join(at)})" if at else ""
        if self.cause == "memory":
            return (
                f"rule {self.rule} ran out of memory in its last attempt{at_s}: {where} was killed "
                f"[{self.evidence}]. Give it more memory: "
                f"raise mem_mb of {self.rule} under set-resources "
                "in your profile (profiles/slurm/profile.yaml), or --retries for more attempts, "
                "then rerun "
                "the same command; finished jobs are kept."
            )
        if self.cause == "time":
            return (
                f"rule {self.rule} hit its time limit in its last attempt{at_s}: "
                f"{where} [{self.evidence}]. "
                f"Raise runtime of {self.rule} under set-resources in your profile, "
                "or shard it smaller "
                "(README, job table), then rerun the same command; finished jobs are kept."
            )
        return f"rule {self.rule} failed: see {', '.join(self.logs) or 'its log'}."


def _final_errors(text: str):
    """(rule, block text) of the 'Error in rule X:' blocks of a Snakemake log that were final: the
    job was neither restarted (``retries``) nor finished afterwards."""
    starts = list(re.finditer(r"^Error in rule (\w+):$", text, re.MULTILINE))
    final: dict[str, tuple[str, str]] = {}
    for m, nxt in zip(starts, [*starts[1:], None], strict=True):
        block = text[m.end() : nxt.start() if nxt else len(text)]
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.MULTILINE)
        key = jobid.group(1) if jobid else f"{m.group(1)}@{m.start()}"
        later = text[m.end() :]
        if jobid and re.search(
            rf"^(Trying to restart job {key}\.|Finished jobid: {key} )", later, re.MULTILINE
        ):
            final.pop(key, None)
            continue
        final[key] = (m.group(1), block)
    return list(final.values())


def _log_paths(block: str, base: Path) -> list[Path]:
    paths = []
    for line in re.findall(r"^\s+log: (.+)$", block, re.MULTILINE):
        for p in re.split(r",\s*", line.split(" (check log")[0]):
            p = Path(p.strip())
            paths.append(p if p.is_absolute() else base / p)
    return paths


def explain(snakemake_log: str | Path | list, workdir: str | Path | None = None) -> list[Failure]:
    """The final failures of a Snakemake run (one per rule: its last), with their causes.

    ``snakemake_log``: the run's log file, or the list of them that ``onerror`` gets (the last is
    read).
    """
    if isinstance(snakemake_log, (list, tuple)):
        snakemake_log = snakemake_log[-1]
    log = Path(snakemake_log)
    base = Path(workdir) if workdir else Path.cwd()
    last: dict[str, Failure] = {}
    for rule, block in _final_errors(log.read_text(errors="replace")):
        job = re.search(r"SLURM-job '(\d+)' failed", block)
        f = Failure(rule=rule, job=job.group(1) if job else None, logs=[])
        if re.search(r"OUT_OF_MEMORY", block):
            f.cause, f.evidence = "memory", "Slurm status OUT_OF_MEMORY"
        elif re.search(r"status is: 'TIMEOUT'", block):
            f.cause, f.evidence = "time", "Slurm status TIMEOUT"
        for path in _log_paths(block, base):
            f.logs.append(str(path))
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            mem = re.findall(r"^\s+resources: .*?\bmem_mb=(\d+)", text, re.MULTILINE)
            attempt = re.findall(r"--attempt (\d+)", text)
            f.mem_mb = int(mem[-1]) if mem else f.mem_mb
            f.attempt = int(attempt[-1]) if attempt else f.attempt
            if f.cause is None:
                lines = [ln.strip() for ln in text.splitlines() if not HEADER.match(ln)]
                for cause, pattern in (("memory", OOM), ("time", TIMEOUT)):
                    hit = next((ln for ln in lines if pattern.search(ln)), None)
                    if hit:
                        f.cause, f.evidence = cause, hit[:200]
                        break
        last[rule] = f
    return list(last.values())


def report(
    snakemake_log: str | Path | list, workdir: str | Path | None = None, stream=None
) -> list[Failure]:
    """Print one line per failed rule (``onerror`` handler); never raises."""
    stream = stream or sys.stderr
    try:
        failures = explain(snakemake_log, workdir)
    except Exception as exc:  # the handler must not hide Snakemake's own error
        print(f"repexp: could not read the failed jobs' logs ({exc})", file=stream)
        return []
    for f in failures:
        print(f"repexp: {f.message()}", file=stream)
    return failures


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log", help="the Snakemake log of the failed run (.snakemake/log/...)")
    ap.add_argument(
        "--workdir", default=None, help="the run's working directory (relative log paths)"
    )
    args = ap.parse_args(argv)
    report(args.log, args.workdir, stream=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
