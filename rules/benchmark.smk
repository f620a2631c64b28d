# Stage rules: benchmark (see rules/common.smk for path patterns).
