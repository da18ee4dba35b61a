"""Dagster building blocks shared by the domain folders in `defs/` (which hold definitions only): resources and
their one binding, IO managers, tags, output and metadata helpers, config views of core's settings objects, the
sharded-stage builder, GRPO stage helpers, progress reporting and the console."""
