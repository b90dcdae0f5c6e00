"""Map-style datasets shared by the DataLoader tests (a module of their
own: a worker loads them by reference)."""


class FailsAt:
    """Sample ``bad`` raises ``error`` ("sample {i} is broken"); the others
    are their index."""

    def __init__(self, bad: int, n: int = 40, error: type[Exception] = KeyError) -> None:
        self.bad, self.n, self.error = bad, n, error

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if i == self.bad:
            raise self.error(f"sample {i} is broken")
        return i
