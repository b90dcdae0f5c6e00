"""Calls a type checker must reject, each marked with the error mypy gives:
`mypy --strict` (warn_unused_ignores) fails on an ignore that is no longer
needed, i.e. once corral's signatures stop catching the mistake."""

import corral


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


class Model:
    pass


def mistakes(pool: corral.ProcessPoolExecutor, threads: corral.ThreadPoolExecutor) -> None:
    pool.submit(square, "not an int")  # type: ignore[arg-type]
    threads.submit(square, 1, 2)  # type: ignore[call-arg]
    pool.submit(add, 1, z=2)  # type: ignore[call-arg]
    pool.options(timeout=1.0).submit(square, b"x")  # type: ignore[arg-type]
    text: str = pool.submit(square, 2).result()  # type: ignore[assignment]
    pool.map(square, ["x", "y"])  # type: ignore[arg-type]
    threads.map(add, [1], ["y"])  # type: ignore[arg-type]
    pool.imap_unordered(square, [b"x"])  # type: ignore[arg-type]
    model: Model = corral.worker_state(int)  # type: ignore[assignment]
    print(text, model)


async def async_mistakes(threads: corral.ThreadPoolExecutor) -> None:
    await threads.run_async(square, "x")  # type: ignore[arg-type]
    async for s in threads.map_async(square, ["x"]):  # type: ignore[arg-type]
        print(s)
