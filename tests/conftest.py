"""Test-suite settings."""
import torch

# The tests run tiny models whose ops gain nothing from intra-op parallelism, while a second
# thread competing with other processes on a 2-core CI machine slows them down many times over.
torch.set_num_threads(1)
