"""The training job: ``python -m manymodels.training`` trains a
:class:`~manymodels.training.task.TrainingTask` with Ray Train, exports it to ONNX, scores it
against the version behind ``stable``, publishes it and moves ``canary`` (and ``stable`` when it
passes). See docs/training.md.

Nothing is imported here: the submodules that need torch and Ray Train import them themselves.
"""
