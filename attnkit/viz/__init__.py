"""Looking inside a trained model: attention weights, attention entropy, the next-token
distribution at several temperatures and a PCA of the token embeddings; for an image model,
the class probabilities and the attention rollout over the image's patches.

:mod:`attnkit.viz.inspect` and :mod:`attnkit.viz.vision` compute the numbers (torch only);
:mod:`attnkit.viz.plots` draws them with matplotlib, which is imported only when a picture
is made.
"""
