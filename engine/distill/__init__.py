"""Distillation (issue 16): a few-step student trained on the teacher's trajectory
(``engine.distill.objective``), the tiny VAE decoder (``engine.models.taesd``); the CLI is
``python -m engine.distill`` (``engine.cli.distill``). See docs/distillation.md."""
