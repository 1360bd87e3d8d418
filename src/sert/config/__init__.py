"""The structured configs: every default of the run and the paper section it comes from.

``conf/*.yaml`` only select and override what is here. ``sert.schema`` assembles these groups into the
top-level ``Config`` (with the stage and trainer configs) and registers it in Hydra's ConfigStore.
"""
