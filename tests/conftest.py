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


@pytest.fixture(scope="session")
def devinterp_view():
    """A wrapper that shows devinterp an rllc model as a plain nn.Module: devinterp treats anything with
    cfg.n_heads as a HookedTransformer (to(..., print_details)). Parameter names gain the prefix "net."."""
    from torch import nn

    class Plain(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, tokens):
            return self.net(tokens)

    return Plain
