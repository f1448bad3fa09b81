"""The internal-coordinate head's sampling shortcuts give what the plain forms give."""
import numpy as np
import torch

from backmap.icgen.head import Head, _component


def test_unit_features_equal_features():
    torch.manual_seed(0)
    head = Head(n_context=10, n_slots=5, n_frame=7, hidden=16)
    context, slot = torch.randn(64, 10), torch.randint(0, 5, (64,))
    previous, frame = torch.randn(64, 5), torch.randn(64, 7)
    torch.testing.assert_close(head.unit_features(context)(slot, previous, frame),
                               head.features(context, slot, previous, frame), atol=1e-5, rtol=1e-5)


def test_components_follow_their_weights():
    """Frequencies of the drawn components within 5 binomial standard deviations of the weights."""
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 40_000
    drawn = _component(torch.log(weights).expand(n, 4), torch.Generator().manual_seed(1))
    freq = np.bincount(drawn.numpy(), minlength=4) / n
    sd = np.sqrt(weights.numpy() * (1 - weights.numpy()) / n)
    assert np.all(np.abs(freq - weights.numpy()) < 5 * sd), freq
