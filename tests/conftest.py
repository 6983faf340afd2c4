import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run every test module's torch work on one thread.

    The test models are tiny: thread hand-offs cost more than they save, and on
    a shared machine two spinning threads can slow them by orders of magnitude.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
