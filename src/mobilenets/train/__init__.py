"""Training of every task: the one trainer (:func:`.trainer.fit`), its typed config, recipes, the epoch loop,
run-folder state for ``--resume``, DDP, EMA and freezing."""
