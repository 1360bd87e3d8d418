"""Training: supervised fine-tuning of a causal LM on (prompt, completion) pairs (paper II-B, II-C2).

* ``config``  -- ``TrainerConfig``: every trainer setting, its default and paper reference (III-A).
* ``data``    -- the SFT example builder: prompt masking, dynamic padding, length-grouped batches.
* ``base``    -- ``BaseTrainer``: what the trainers share (data preparation, summary, checkpoints).
* ``sft``     -- ``HFTrainer`` (``trainer=sft``, default): transformers' Trainer.
* ``loop``    -- ``LoopTrainer`` (``trainer=loop``): the same recipe as a plain torch loop.
* ``steps``   -- the ``self_train`` / ``distill`` / ``finetune`` steps: one step function, one example
  source per step (``steps/<step>.py``).

This package is imported when configs are composed (``config.register``): keep its trainer modules light
(import transformers inside functions, or in a ``_private`` module).
"""
