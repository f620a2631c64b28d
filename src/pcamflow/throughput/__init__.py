"""throughput: one stage of the pipeline (docs/development.md: the stages and what each may import)."""
