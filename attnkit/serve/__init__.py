"""``attnkit serve``: an OpenAI-compatible HTTP server and a browser playground for one model.

FastAPI is imported only when :func:`create_app` is called, so ``import attnkit.serve`` is cheap.
See ``docs/serving.md``.
"""

from __future__ import annotations


def create_app(run, model_name: str, api_key: str | None = None, **kwargs):
    """The FastAPI application serving ``run`` (what :func:`attnkit.load` returned, or a bare
    model with ``tokenizer=``) as ``model_name``; see :func:`attnkit.serve.app.create_app`."""
    from attnkit.serve.app import create_app as make_app

    return make_app(run, model_name, api_key=api_key, **kwargs)


__all__ = ["create_app"]
