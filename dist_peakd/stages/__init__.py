"""Pipeline stages: one file per stage, each with an explicit ``run(options)``."""
