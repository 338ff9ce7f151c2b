"""Training: recipes, the epoch loop, run-folder state for ``--resume``, DDP, and the task entry points
(:mod:`.classify`; detection and segmentation live in ``detect`` / ``segment``)."""
