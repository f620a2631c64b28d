# Stage rules: train (see rules/common.smk for path patterns).
