"""Batch renders on Ray: ``python -m engine.batch MANIFEST --out DIR`` (see docs/scale-out.md).

``manifest`` reads the items, ``actor`` is the render actor (one engine each), ``runner`` the driver
that schedules, retries and commits. Ray is imported only when there is something to render.
"""
