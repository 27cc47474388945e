"""Training: the data loader (``sequences``), the model an experiment describes
(``model_factory``), the optimizer and schedule (``optim``), checkpoints (``checkpoint``), one
optimisation step (``step``: no I/O, what a distributed wrapper calls in each process) and the
loop around it (``trainer``)."""
