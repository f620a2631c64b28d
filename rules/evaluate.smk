# Stage rules: evaluate (see rules/common.smk for path patterns).
