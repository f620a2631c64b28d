# The answer first: one table of the champion, its test metrics with intervals beside the baselines,
# the failed runs and the data audit's findings (the report's first page), and the few lines a
# finished run prints last. Library: pcamflow.evaluation.overview. Path patterns: rules/common.smk.
import time

from pcamflow.data.store import STATS_FILE
from pcamflow.evaluation.overview import end_of_run_message
from pcamflow.terminal import next_command


rule overview:
    input:
        champion=CHAMPION_JSON,
        evaluation=EVALUATE_JSON,
        runs=RUNS_CSV,
        failed=FAILED_RUNS,
        audits=expand(AUDIT_JSON, split=SPLITS),
        cross=AUDIT_CROSS,
        prepared=STORE / STATS_FILE,  # what prepare kept and dropped
        throughput=THROUGHPUT_SUMMARY,  # the partitions not measured, and why
    output:
        rst=OVERVIEW_RST,
        html=report(OVERVIEW_HTML, caption="../report/overview.rst", category=CATEGORY["overview"]),
        txt=OVERVIEW_TXT,
    log:
        LOGS / "overview.log",
    conda:
        CONDA_ENV
    params:
        splits=SPLITS,
    script:
        "../workflow_scripts/overview.py"


TARGETS.extend([OVERVIEW_RST, OVERVIEW_HTML, OVERVIEW_TXT])


# when this invocation started (the Snakefile is read first): what a failed run may show is what it wrote
STARTED = time.time()


# The last lines of a run: the overview when it is current, else the failed runs, else nothing; then
# the next commands, written so that they run as printed (.venv/bin/... when the venv is not active).
onsuccess:
    print(end_of_run_message(OVERVIEW_TXT, FAILED_RUNS, [RUNS_CSV, EVALUATE_JSON], next_command), end="")


onerror:
    print(
        end_of_run_message(
            OVERVIEW_TXT, FAILED_RUNS, [RUNS_CSV, EVALUATE_JSON], next_command, written_since=STARTED
        ),
        end="",
    )
    print(
        "pcamflow: some jobs failed (their logs are named above);"
        f" `{next_command('pcamflow', 'status')}` shows the sweep"
    )
