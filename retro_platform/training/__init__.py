"""Training: the data loader (``sequences``), the model an experiment describes
(``model_factory``), the optimizer and schedule (``optim``), checkpoints (``checkpoint``) and
the loop (``trainer``)."""
