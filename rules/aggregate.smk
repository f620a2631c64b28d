# Stage rules: aggregate (see rules/common.smk for path patterns).
