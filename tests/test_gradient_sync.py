"""Gradient averaging across two gloo processes: the bucketed, backward-overlapped all-reduce leaves exactly the
mean of the ranks' gradients when backward returns, also when a parameter gets no gradient on one rank, and the
same as a plain all-reduce per parameter."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from darth_ray.distributed.train import OverlappedAllReduce


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4))


def _local_grads(model, rank: int, step: int) -> list[torch.Tensor]:
    """Rank- and step-dependent loss; on rank 1 at odd steps the last layer's bias gets no gradient."""
    model.zero_grad(set_to_none=True)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(100 * rank + step))
    hidden = model[:4](x)
    if rank == 1 and step % 2:
        loss = (hidden @ model[4].weight.T).square().mean()  # bias unused
    else:
        loss = model(x).square().mean()
    loss.backward()
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    overlapped, plain, alone = _model(), _model(), _model()
    sync = OverlappedAllReduce(list(overlapped.parameters()), bucket_mb=0.002)  # ~2 KB: several buckets
    out = []
    for step in range(4):
        local = _local_grads(alone, rank, step)
        _local_grads(overlapped, rank, step)  # averaged when backward returns
        for p, g in zip(plain.parameters(), _local_grads(plain, rank, step)):
            p.grad = torch.zeros_like(p) if g is None else g
            dist.all_reduce(p.grad)
            p.grad /= 2
        out.append((local, [p.grad.clone() for p in overlapped.parameters()],
                    [p.grad.clone() for p in plain.parameters()]))
    as_numpy = lambda grads: [None if g is None else g.numpy() for g in grads]  # tensors would pass by handle
    queue.put((rank, [tuple(map(as_numpy, o)) for o in out], len(sync.buckets)))
    dist.destroy_process_group()


def test_overlapped_allreduce_averages_exactly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((rank, (out, buckets)) for rank, out, buckets in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][1] > 2
    for step in range(4):
        local0, overlapped0, plain0 = results[0][0][step]
        local1, overlapped1, plain1 = results[1][0][step]
        for g0, g1, o0, o1, p0 in zip(local0, local1, overlapped0, overlapped1, plain0):
            g0, o0, o1, p0 = map(torch.from_numpy, (g0, o0, o1, p0))
            g1 = torch.zeros_like(g0) if g1 is None else torch.from_numpy(g1)
            torch.testing.assert_close(o0, (g0 + g1) / 2, rtol=1e-6, atol=1e-7)
            assert torch.equal(o0, o1)  # identical on both ranks
            assert torch.equal(o0, p0)  # same as the plain flattened all-reduce
