import pytest
import torch

from solo_mixmask.core import KeyQueue
from solo_mixmask.losses import moco_loss


def keys(ids: list[int]) -> torch.Tensor:
    """(1, n, 2) keys whose first feature is the id, to read positions back."""
    return torch.tensor([[[float(i), -float(i)] for i in ids]])


def ids_in(queue: KeyQueue) -> list[int]:
    return [int(v) for v in queue.queue[0, 0].tolist()]


def test_init_buffers():
    q = KeyQueue(2, 8, 16)
    assert q.queue.shape == (2, 8, 16) and q.queue.dtype == torch.float32
    assert torch.allclose(q.queue.norm(dim=1), torch.ones(2, 16))
    assert q.ptr.dtype == torch.long and int(q.ptr) == 0
    assert set(q.state_dict()) == {"queue", "ptr"}
    assert list(q.parameters()) == []


def test_enqueue_wraps_around_with_batches_that_do_not_divide_size():
    q = KeyQueue(1, 2, 5)
    q.enqueue(keys([1, 2, 3]))  # columns 0, 1, 2
    assert ids_in(q)[:3] == [1, 2, 3] and int(q.ptr) == 3
    q.enqueue(keys([4, 5, 6]))  # columns 3, 4, then 0
    assert ids_in(q) == [6, 2, 3, 4, 5] and int(q.ptr) == 1
    q.enqueue(keys([7, 8, 9, 10, 11, 12, 13]))  # n > size: written 1,2,3,4,0,1,2 in turn
    assert ids_in(q) == [11, 12, 13, 9, 10] and int(q.ptr) == 3
    assert torch.equal(q.queue[0, 1], -q.queue[0, 0])  # whole key columns were written


def test_enqueue_exactly_size_and_two_queues():
    q = KeyQueue(2, 2, 4)
    q.enqueue(torch.cat([keys([1, 2]), keys([10, 20])]))
    q.enqueue(torch.cat([keys([3, 4, 5, 6]), keys([30, 40, 50, 60])]))  # n == size from ptr 2
    assert q.queue[0, 0].tolist() == [5.0, 6.0, 3.0, 4.0]
    assert q.queue[1, 0].tolist() == [50.0, 60.0, 30.0, 40.0]
    assert int(q.ptr) == 2


def test_enqueue_rejects_wrong_shape():
    q = KeyQueue(2, 4, 8)
    with pytest.raises(ValueError, match=r"keys.shape=\(1, 3, 4\)"):
        q.enqueue(torch.randn(1, 3, 4))


def test_enqueue_does_not_track_gradients():
    q = KeyQueue(1, 3, 4)
    k = torch.randn(1, 2, 3, requires_grad=True)
    q.enqueue(k)
    assert not q.queue.requires_grad


def test_get_returns_a_copy_safe_for_backward_after_enqueue():
    q = KeyQueue(1, 4, 6)
    snapshot = q.get(0)
    assert snapshot.shape == (4, 6) and torch.equal(snapshot, q.queue[0])
    query = torch.randn(3, 4, requires_grad=True)
    loss = moco_loss(query, torch.randn(3, 4), snapshot, 0.2)
    q.enqueue(torch.randn(1, 3, 4))  # in-place write before backward, as a training step does
    loss.backward()
    assert query.grad is not None
    assert not torch.equal(snapshot, q.queue[0])
