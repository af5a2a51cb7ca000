"""Fixtures shared by the whole suite."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    # The test models and tensors are tiny: a second intra-op thread costs more in
    # hand-offs than it saves, badly so on a shared 2-core machine (measured 3-40x).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def float64():
    """Make float64 the default dtype for one test (restored afterwards).
    Modules that compare with float64 reference loops use it for every test:
    ``pytestmark = pytest.mark.usefixtures("float64")``."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
