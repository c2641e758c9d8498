"""Training, faithful to the release's ``train.py``: the step (``step``), data (``data``), checkpoints
(``checkpoint``), process groups (``distributed``) and the loop (``loop.train_loop``)."""
