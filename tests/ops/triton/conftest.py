import numpy as np
import pytest

pytest.importorskip("triton")
import triton.language as tl  # noqa: E402


@pytest.fixture(autouse=True)
def nan_filled_allocations(monkeypatch):
    """Fresh kernel buffers start as NaN, so a kernel that reads memory it never wrote fails (fla's trick)."""
    from tost_edge.ops.triton import utils
    monkeypatch.setattr(utils, "NAN_FILL", True)


@pytest.fixture(autouse=True)
def schemes_as_named(monkeypatch):
    """The TSSA forward runs the scheme a test names (RESIDENT or the passes): on a GPU, RESIDENT_ONE_WAVE would run
    short batches resident whatever RESIDENT says. Its own tests turn it back on (one_wave)."""
    from tost_edge.ops.triton import tssa
    monkeypatch.setattr(tssa, "RESIDENT_ONE_WAVE", False)


@pytest.fixture
def concurrent_programs(monkeypatch):
    """Under the interpreter, run the programs of every launch at once, in threads, as a GPU runs resident programs:
    kernels whose programs wait for each other (spin on counters another program raises) can then run with more
    than one program per group. Each program sees its own program id; atomics are serialised; a launch whose
    programs are still waiting after two minutes fails instead of hanging."""
    import inspect
    import threading
    import time
    import types

    from triton.runtime import interpreter as it
    builder = it.interpreter_builder
    if not all(hasattr(x, y) for x, y in ((it, "GridExecutor"), (it, "TensorHandle"), (builder, "set_grid_idx"),
                                           (builder, "create_get_program_id"), (builder, "create_atomic_rmw"))):
        pytest.skip("this Triton's interpreter has another layout")
    local, lock, abort = threading.local(), threading.RLock(), threading.Event()

    def concurrent(fn):
        threads, errors = [], []
        Thread = threading.Thread                        # closure cells: the wrapper runs in fn's globals

        def run(idx, args):
            local.idx = idx
            try:
                fn(**args)
            except BaseException as e:  # noqa: BLE001 - re-raised by the launch
                errors.append(e)

        def program(**args):
            t = Thread(target=run, args=(builder.grid_idx, args), daemon=True)
            t.start()
            threads.append(t)
            gx, gy, gz = builder.grid_dim
            if len(threads) == gx * gy * gz:
                deadline = time.monotonic() + 120
                for t in threads:
                    t.join(max(0.0, deadline - time.monotonic()))
                if any(t.is_alive() for t in threads):
                    abort.set()                          # the waiting programs raise at their next atomic
                    raise TimeoutError("programs still waiting for each other after 120 s")
                if errors:
                    raise errors[0]

        wrapper = types.FunctionType(program.__code__, fn.__globals__, fn.__name__, None, program.__closure__)
        wrapper.__signature__ = inspect.signature(fn)
        wrapper.__annotations__ = fn.__annotations__
        return wrapper

    init, atomic = it.GridExecutor.__init__, builder.create_atomic_rmw

    def executor(self, fn, *args, **kwargs):
        init(self, concurrent(fn), *args, **kwargs)

    def own_program_id(axis):
        return it.TensorHandle(np.array([local.idx[axis]], dtype=np.int32), tl.int32)

    def serialised_atomic(*args, **kwargs):
        if abort.is_set():
            raise TimeoutError("launch aborted")
        with lock:
            return atomic(*args, **kwargs)

    monkeypatch.setattr(it.GridExecutor, "__init__", executor)
    monkeypatch.setattr(builder, "create_get_program_id", own_program_id)
    monkeypatch.setattr(builder, "create_atomic_rmw", serialised_atomic)
