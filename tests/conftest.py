"""Suite-wide settings.

Tests use tiny models, for which one thread is as fast as several and is not
slowed down by whatever else runs on the machine; results are also repeatable.
"""

import torch

torch.set_num_threads(1)
