"""Looking inside a trained model: attention weights, attention entropy, the next-token
distribution at several temperatures and a PCA of the token embeddings.

:mod:`attnkit.viz.inspect` computes the numbers (torch only); :mod:`attnkit.viz.plots`
draws them with matplotlib, which is imported only when a picture is made.
"""
