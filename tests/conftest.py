"""Test-suite settings and shared fixtures."""
import pyro
import pytest
import torch

# The tests run tiny models whose ops gain nothing from intra-op parallelism, while a second
# thread competing with other processes on a 2-core CI machine slows them down many times over.
torch.set_num_threads(1)


@pytest.fixture
def clean_pyro():
    """A fresh param store, seed 0 and Pyro's validation on, for one test (``pytestmark =
    pytest.mark.usefixtures("clean_pyro")`` applies it to a module)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()
