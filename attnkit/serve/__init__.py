"""``attnkit serve``: an OpenAI-compatible HTTP server and a browser playground for one model.

FastAPI is imported only when :func:`create_app` is called, so ``import attnkit.serve`` is cheap.
See ``docs/serving.md``.
"""

from __future__ import annotations


def create_app(model, model_name: str, api_key: str | None = None, **kwargs):
    """The FastAPI application serving ``model`` as ``model_name``; see :mod:`attnkit.serve.app`."""
    from attnkit.serve.app import create_app as _create_app

    return _create_app(model, model_name, api_key=api_key, **kwargs)


__all__ = ["create_app"]
