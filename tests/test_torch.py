"""torch tensors through corral (``corral._torch``): Queue, Pipe and the
process pool carry CPU tensors as views on the received buffers, keep
their dtype, shape, strides and storage sharing, and refuse what cannot
travel with torch.multiprocessing's words or a message naming the fix.

torch is not a dependency: the tests that need it skip with the reason
when it is absent (``make test-torch`` installs the ``torch`` extra and runs
this file). torch is imported inside the tests (fixture ``torch``), not
at collection, so the rest of a suite run does not carry it.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import pickle
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import pytest

import _torch_tasks as tt
import corral
from _helpers import wait_until
from corral import _pickle, _torch

TIMEOUT = 120
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed (`make test-torch` installs it)")


@pytest.fixture
def torch() -> Any:
    if not HAVE_TORCH:
        pytest.skip("torch is not installed (`make test-torch` installs it)")
    import torch

    return torch


@pytest.fixture
def pool() -> Any:
    # spawn: a fresh worker that has not imported torch (a forked one
    # inherits it; a fork server may have imported it while idle, or may
    # have had that import cut short, which leaves torch unimportable in
    # its later workers: a fork server bug, reported, not the transport's).
    with corral.ProcessPoolExecutor(max_workers=1, start_method="spawn") as ex:
        yield ex


def round_trip(obj: Any) -> Any:
    """``obj`` through a queue in this process (the same pickling and the
    same receipt as between processes)."""
    q: corral.Queue[Any] = corral.Queue()
    q.put(obj)
    return q.get(timeout=TIMEOUT)


def same(a: Any, b: Any) -> bool:
    """Same type, dtype, shape, strides, offset and bytes."""
    return (
        type(a) is type(b)
        and a.dtype == b.dtype
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.requires_grad == b.requires_grad
        and bytes(a.detach().contiguous().view(-1).view(torch_uint8(a)))
        == bytes(b.detach().contiguous().view(-1).view(torch_uint8(b)))
    )


def torch_uint8(t: Any) -> Any:
    return sys.modules["torch"].uint8


def block_address(block: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(block))


# -- without torch -----------------------------------------------------------


def test_corral_never_imports_torch() -> None:
    """Pickling and receipt test ``sys.modules``; they never import torch
    (this runs whether torch is installed or not)."""
    code = """
        import sys
        import corral
        q = corral.Queue()
        q.put({"x": bytearray(100_000), "y": [1, 2]})
        q.get(timeout=60)
        with corral.ProcessPoolExecutor(1) as ex:
            assert ex.submit(sum, [1, 2]).result(60) == 3
        assert "torch" not in sys.modules, "corral imported torch"
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@needs_torch
def test_a_worker_that_never_touched_a_tensor_does_not_load_torch(torch: Any, pool: Any) -> None:
    assert pool.submit(tt.loaded, "torch").result(TIMEOUT) is False
    assert pool.submit(tt.double, torch.ones(3)).result(TIMEOUT).tolist() == [2.0, 2.0, 2.0]
    assert pool.submit(tt.loaded, "torch").result(TIMEOUT) is True, "loaded by the first tensor it received"


# -- what a tensor looks like on receipt -------------------------------------


def test_a_large_tensor_arrives_as_a_view_on_the_received_block(torch: Any) -> None:
    t = torch.arange(1_000_000, dtype=torch.float32)
    q: corral.Queue[Any] = corral.Queue()
    q.put(t)
    inband, buffers = q._q.get(True, TIMEOUT)
    assert len(inband) < 1000, "the storage is not in the pickle stream"
    (block,) = buffers
    assert type(block).__name__ == "ShmBlock" and len(block) == t.nbytes
    got = _pickle.loads(inband, buffers)
    assert got.data_ptr() == block_address(block), "no copy: the tensor's data is the block"
    assert torch.equal(got, t)
    del block, buffers
    gc.collect()
    assert q._q.arena_used() >= t.nbytes, "the tensor holds its block"
    del got
    gc.collect()
    assert q._q.arena_used() == 0, "the block is freed with the last view"


def test_a_received_tensor_is_writable_without_a_warning(torch: Any) -> None:
    for n in (10, 5_000, 1_000_000):  # in the stream, out of band in the ring, in the arena
        t = torch.ones(n)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = round_trip(t)
        got += 1
        assert bool((got == 2).all()) and bool((t == 1).all()), "the receiver's memory is its own"


def test_a_small_tensor_stays_in_the_stream(torch: Any) -> None:
    t = torch.arange(10, dtype=torch.int64)
    data, buffers = _pickle.dumps(t)
    assert buffers == [] and len(data) < 600
    assert same(_pickle.loads(data, buffers), t)


def test_every_cpu_dtype_round_trips(torch: Any) -> None:
    dtypes = {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    tried = 0
    for dtype in sorted(dtypes, key=str):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "experimental" or "deprecated" dtypes
                t = torch.zeros(3000, dtype=dtype)
        except (RuntimeError, TypeError, NotImplementedError):
            continue  # a dtype torch cannot allocate on the CPU (sub-byte, quantized without a scale)
        torch.manual_seed(0)
        t.view(torch.uint8).copy_(torch.randint(0, 256, (t.nbytes,), dtype=torch.uint8))
        for sample in (t, t[:5]):  # out of band and in the stream
            got = round_trip(sample)
            assert same(got, sample), dtype
        tried += 1
    assert tried >= 20, f"only {tried} dtypes could be made"


@pytest.mark.parametrize(
    "make",
    [
        lambda torch: torch.arange(60_000.0).view(200, 300).t(),
        lambda torch: torch.arange(60_000.0).view(200, 300)[10:150:3, ::7],
        lambda torch: torch.arange(10.0).expand(5000, 10),
        lambda torch: torch.arange(100_000, dtype=torch.int16)[777:],
        lambda torch: torch.arange(24.0).view(2, 3, 4).permute(2, 0, 1),
    ],
    ids=["transposed", "strided", "expanded", "offset", "permuted"],
)
def test_a_non_contiguous_view_keeps_its_strides(torch: Any, make: Any) -> None:
    t = make(torch)
    got = round_trip(t)
    assert same(got, t) and got.is_contiguous() == t.is_contiguous()


def test_a_small_slice_of_a_large_tensor_sends_only_its_span(torch: Any) -> None:
    big = torch.zeros(1_000_000)
    data, buffers = _pickle.dumps(big[500:510])
    assert sum(memoryview(b).nbytes for b in buffers) + len(data) < 1000
    data, buffers = _pickle.dumps(big[1000:301_000:3])
    assert sum(memoryview(b).nbytes for b in buffers) == (300_000 - 3 + 1) * 4
    got = _pickle.loads(data, buffers)
    assert same(got, big[1000:301_000:3])


def test_tensors_sharing_a_storage_share_it_on_receipt(torch: Any) -> None:
    base = torch.arange(100_000, dtype=torch.float32)
    msg = {"base": base, "row": base.view(100, 1000)[3], "ints": base.view(torch.int32), "step": base[::2]}
    data, buffers = _pickle.dumps(msg)
    assert len(buffers) == 1, "one storage, sent once"
    got = round_trip(msg)
    for k in msg:
        assert same(got[k], msg[k]), k
    got["base"][3000] = -1.0
    assert got["row"][0] == -1.0 and got["step"][1500] == -1.0, "one memory on receipt, as it was"


def test_a_later_tensor_outside_the_first_span_gets_its_own(torch: Any) -> None:
    base = torch.arange(100_000, dtype=torch.float32)
    got = round_trip([base[:10], base])  # the slice's span is 40 bytes: the whole comes after
    assert same(got[0], base[:10]) and same(got[1], base)


def test_zero_element_tensors(torch: Any) -> None:
    for t in (torch.empty(0), torch.empty(3, 0, 2), torch.ones(4, 5)[:, 5:], torch.empty(0, dtype=torch.bfloat16)):
        got = round_trip(t)
        assert got.shape == t.shape and got.dtype == t.dtype and got.numel() == 0


# -- autograd, subclasses, layouts and devices -------------------------------


def test_requires_grad_leaves_and_parameters(torch: Any) -> None:
    leaf = torch.ones(2000, requires_grad=True)
    got = round_trip(leaf)
    assert got.requires_grad and got.is_leaf and torch.equal(got.detach(), leaf.detach())
    param = torch.nn.Parameter(torch.arange(3000.0))
    got = round_trip({"w": param, "frozen": torch.nn.Parameter(torch.ones(10), requires_grad=False)})
    assert type(got["w"]) is torch.nn.Parameter and got["w"].requires_grad
    assert torch.equal(got["w"].detach(), param.detach())
    assert type(got["frozen"]) is torch.nn.Parameter and not got["frozen"].requires_grad


def test_a_non_leaf_that_requires_grad_is_refused_as_torch_multiprocessing_does(torch: Any) -> None:
    from torch.multiprocessing.reductions import reduce_tensor

    y = torch.ones(3, requires_grad=True) * 2
    with pytest.raises(RuntimeError) as theirs:
        reduce_tensor(y)
    q: corral.Queue[Any] = corral.Queue()
    with pytest.raises(RuntimeError) as ours:
        q.put({"y": y})
    assert str(ours.value) == str(theirs.value)
    q.put(y.detach())  # their advice works
    assert torch.equal(q.get(timeout=TIMEOUT), y.detach())


def test_a_module_state_dict_round_trips(torch: Any) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    state = model.state_dict()
    got = round_trip(state)
    assert list(got) == list(state)
    assert all(torch.equal(got[k], state[k]) for k in state)
    model.load_state_dict(got)


def test_a_subclass_and_python_attributes_keep_their_type(torch: Any) -> None:
    t = torch.arange(5000.0)
    t.note = "kept"
    got = round_trip(t)
    assert torch.equal(got, t) and got.note == "kept"
    sub = tt.Labelled(torch.arange(5000.0))  # torch's own reduction
    got = round_trip(sub)
    assert type(got) is tt.Labelled and torch.equal(got.as_subclass(torch.Tensor), sub.as_subclass(torch.Tensor))


def test_sparse_quantized_and_conjugate_tensors_round_trip(torch: Any) -> None:
    dense = torch.zeros(300, 300)
    dense[7, 11], dense[200, 3] = 1.5, -2.0
    sparse = dense.to_sparse()
    got = round_trip(sparse)
    assert got.is_sparse and torch.equal(got.to_dense(), dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized tensors are deprecated; TypedStorage too
        q = torch.quantize_per_tensor(torch.rand(5000), 0.1, 10, torch.quint8)
        got = round_trip(q)
    assert got.is_quantized and torch.equal(got.int_repr(), q.int_repr()) and got.q_scale() == q.q_scale()
    c = torch.complex(torch.arange(3000.0), torch.ones(3000)).conj()
    got = round_trip(c)
    assert torch.equal(got, c) and not got.is_conj()


def test_what_torch_cannot_pickle_fails_as_it_does(torch: Any) -> None:
    """Whatever torch's own reduction refuses (here a nested tensor, if
    this torch refuses it) is refused by corral too, as a pickling error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "prototype stage"
        nested = torch.nested.nested_tensor([torch.ones(3), torch.ones(5)])
    try:
        expected = pickle.loads(pickle.dumps(nested))
    except Exception:
        with pytest.raises((pickle.PicklingError, TypeError, RuntimeError)):
            corral.Queue().put(nested)
        return
    got = round_trip(nested)
    assert [x.tolist() for x in got.unbind()] == [x.tolist() for x in expected.unbind()]


def test_a_tensor_on_another_device_is_refused_naming_the_fix(torch: Any) -> None:
    # No GPU here: the refusal is checked on a real non-CPU tensor, a meta
    # one (same path: the reducer refuses every device but the CPU), and the
    # CUDA message on the device object the reducer reads.
    with pytest.raises(_pickle.PicklingError, match="meta tensor") as info:
        corral.Queue().put({"w": torch.empty(10, device="meta")})
    assert isinstance(info.value.__cause__, _torch.NotCpuTensorError)
    why = _torch.refusal(torch.device("cuda", 0))
    assert why is not None and "t.cpu()" in why and "torch.multiprocessing" in why and "CUDA IPC" in why
    assert _torch.refusal(torch.device("cpu")) is None


def test_a_plain_pickle_of_a_tensor_is_still_torchs(torch: Any) -> None:
    t = torch.arange(10_000.0)
    _pickle.dumps(t)
    assert b"corral" not in pickle.dumps(t), "only corral's channels use the reducer"


# -- across processes ---------------------------------------------------------


def test_a_queue_carries_tensor_structures_between_processes(torch: Any, start: Any) -> None:
    inq: corral.Queue[Any] = corral.Queue()
    outq: corral.Queue[Any] = corral.Queue()
    p = start(tt.relay, inq, outq)
    base = torch.arange(60_000, dtype=torch.float32)
    batch = tt.Batch(
        images=base.view(20, 3000)[:, ::2],
        labels=torch.arange(20),
        meta={"half": torch.ones(5000, dtype=torch.float16), "flags": (torch.zeros(9, dtype=torch.bool),)},
    )
    inq.put({"batch": batch, "base": base, "list": [base[5:9], torch.empty(0)]})
    shape, values, shared = outq.get(timeout=TIMEOUT)
    assert shape["batch"]["images"] == ("Tensor", "torch.float32", (20, 1500), (3000, 2), 0, False)
    assert shape["batch"]["meta"]["half"][1] == "torch.float16"
    assert shape["list"][0][2:5] == ((4,), (1,), 5)
    assert values[0] == batch.images.tolist() and values[-2] == [5.0, 6.0, 7.0, 8.0]
    assert shared[0] == shared[4] == shared[5], "images, base and its slice share one storage there"
    inq.put(None)
    p.join(TIMEOUT)
    assert p.exitcode == 0


def test_a_process_sends_tensors_back(torch: Any, start: Any) -> None:
    q: corral.Queue[Any] = corral.Queue()
    p = start(tt.send_back, q, 100_000)
    got = q.get(timeout=TIMEOUT)
    p.join(TIMEOUT)
    assert got["tag"] == "made here" and torch.equal(got["base"], torch.arange(100_000, dtype=torch.float32))
    assert torch.equal(got["view"], got["base"][1::2])
    assert got["view"].untyped_storage().data_ptr() == got["base"].untyped_storage().data_ptr()
    assert got["bf16"].dtype == torch.bfloat16 and bool((got["bf16"] == 1).all())


def test_a_pipe_carries_tensors_between_processes(torch: Any, start: Any) -> None:
    a, b = corral.Pipe()
    p = start(tt.pipe_echo, b)
    b.close()
    t = torch.arange(50_000, dtype=torch.float64).view(250, 200)[:, 3:]
    a.send(t)
    got = a.recv()
    assert same(got["same"], t) and torch.equal(got["doubled"], t * 2)
    got["same"][0, 0] = -1  # writable
    a.send(None)
    p.join(TIMEOUT)
    assert p.exitcode == 0


def test_pool_arguments_and_results(torch: Any, pool: Any) -> None:
    t = torch.rand(4_000_000)  # 16 MB
    out = pool.submit(tt.double, t).result(TIMEOUT)
    assert torch.equal(out, t * 2)
    out += 1  # writable, ours
    outs = list(pool.map(tt.double, [torch.ones(n) for n in (1, 5000, 300_000)]))
    assert [float(o.sum()) for o in outs] == [2.0, 10_000.0, 600_000.0]


def test_a_tensor_from_an_arena_born_array_travels_without_a_second_copy(torch: Any, pool: Any) -> None:
    pytest.importorskip("numpy")
    n = 2_000_000
    pool.submit(tt.from_numpy, 10).result(TIMEOUT)  # numpy imported: the allocator is in place
    _, sent, sent_bytes = pool.submit(tt.arena_stats).result(TIMEOUT)
    out = pool.submit(tt.from_numpy, n).result(TIMEOUT)
    assert out.dtype == torch.float64 and bool((out == 3.0).all())
    live, sent2, sent_bytes2 = pool.submit(tt.arena_stats).result(TIMEOUT)
    assert (sent2, sent_bytes2) == (sent + 1, sent_bytes + n * 8), "the array's block itself was sent"
    assert live == 0, "the block is the parent's now"
    results = pool._results._q
    assert results.arena_used() >= n * 8
    del out
    gc.collect()
    assert wait_until(lambda: results.arena_used() == 0, TIMEOUT)


_FORK_AFTER_TORCH = """
import sys, torch, corral
def op(n):
    import torch
    return [torch.get_num_threads(), float((torch.ones(n, n) @ torch.ones(n, n)).sum())]
if __name__ == "__main__":
    torch.set_num_threads(2)
    (torch.rand(600, 600) @ torch.rand(600, 600)).sum()  # the parent's OpenMP pool has run
    pool = corral.ProcessPoolExecutor(1, start_method="fork")
    try:
        print(pool.submit(op, 300).result(timeout=60))
    except TimeoutError:
        print("hung")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
"""


def test_a_fork_worker_of_a_parent_that_ran_torch_runs_torch_ops(torch: Any, tmp_path: Any) -> None:
    # torch's OpenMP pool does not survive a fork: the worker's first
    # parallel op blocked for good (plain os.fork() does the same). A fork
    # worker runs one torch thread, as torch's DataLoader workers do.
    script = tmp_path / "fork_after_torch.py"
    script.write_text(_FORK_AFTER_TORCH)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 27000000.0]", (out.stdout, out.stderr)
