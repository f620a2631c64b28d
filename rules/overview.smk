# The answer first: one table of the champion, its test metrics with intervals beside the baselines,
# the failed runs and the data audit's findings (the report's first page), and the few lines a
# finished run prints last. Library: pcamflow.evaluation.overview. Path patterns: rules/common.smk.
from pcamflow.evaluation.overview import end_of_run_message


rule overview:
    input:
        champion=CHAMPION_JSON,
        evaluation=EVALUATE_JSON,
        runs=RUNS_CSV,
        failed=FAILED_RUNS,
        audits=expand(AUDIT_JSON, split=SPLITS),
        cross=AUDIT_CROSS,
    output:
        rst=OVERVIEW_RST,
        html=report(OVERVIEW_HTML, caption="../report/overview.rst", category="overview"),
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


# The last lines of a run: the overview when it is current, else the failed runs, else nothing.
onsuccess:
    print(end_of_run_message(OVERVIEW_TXT, FAILED_RUNS, [RUNS_CSV, EVALUATE_JSON]), end="")


onerror:
    print(end_of_run_message(OVERVIEW_TXT, FAILED_RUNS, [RUNS_CSV, EVALUATE_JSON]), end="")
    print("pcamflow: some jobs failed (their logs are named above); `pcamflow status` shows the sweep")
