"""The paper's evaluation metrics (``python -m engine.eval``): see ``engine.eval.metrics`` for the
pixel and distribution metrics, ``engine.eval.features`` for the networks some of them need."""
