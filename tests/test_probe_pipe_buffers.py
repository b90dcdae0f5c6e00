"""``Connection.send_bytes``/``recv_bytes_into`` count bytes whatever the
buffer's shape (found by the outside probe of stop 22: a 2-D uint8 image
was sliced by rows, and ``recv_bytes_into`` took the message before
checking its arguments, so a bad buffer or offset lost it)."""

import numpy as np
import pytest

import corral


def test_send_bytes_of_a_2d_byte_array_counts_offset_and_size_in_bytes() -> None:
    a, b = corral.Pipe()
    img = (np.arange(100 * 100) % 251).astype(np.uint8).reshape(100, 100)
    raw = img.tobytes()
    a.send_bytes(img, 5)
    a.send_bytes(img, 5, 10)
    a.send_bytes(img)
    assert b.recv_bytes() == raw[5:]
    assert b.recv_bytes() == raw[5:15]
    assert b.recv_bytes() == raw


@pytest.mark.parametrize(
    "buf", [np.arange(10.0)[::2], np.arange(16, dtype=np.uint8).reshape(4, 4).T], ids=["float64-strided", "uint8-2d-T"]
)
def test_send_bytes_of_a_non_contiguous_buffer_raises_type_error_and_sends_nothing(buf: np.ndarray) -> None:
    a, b = corral.Pipe()
    with pytest.raises(TypeError, match="C-contiguous"):
        a.send_bytes(buf)
    assert not b.poll(0)


def test_recv_bytes_into_a_2d_buffer_counts_its_bytes() -> None:
    a, b = corral.Pipe()
    a.send_bytes(b"x" * 50)
    target = np.zeros((10, 10), dtype=np.uint8)
    assert b.recv_bytes_into(target, 30) == 50
    assert target.tobytes() == b"\0" * 30 + b"x" * 50 + b"\0" * 20


@pytest.mark.parametrize(
    ("buf", "offset", "error"),
    [
        ([1, 2, 3], 0, TypeError),  # not bytes-like
        (b"read-only", 0, TypeError),
        (bytearray(8), 9, ValueError),  # offset past the end
        (bytearray(8), -1, ValueError),
        (np.zeros(8)[::2], 0, TypeError),  # not contiguous
    ],
    ids=["list", "bytes", "offset-too-large", "negative-offset", "strided"],
)
def test_recv_bytes_into_with_bad_arguments_leaves_the_message(buf: object, offset: int, error: type) -> None:
    a, b = corral.Pipe()
    a.send_bytes(b"hello")
    with pytest.raises(error):
        b.recv_bytes_into(buf, offset)
    assert b.poll(10)
    assert b.recv_bytes() == b"hello"


def test_a_zero_size_2d_buffer_sends_and_receives_nothing() -> None:
    # A view with a 0 in its shape cannot be cast to bytes: send_bytes and
    # recv_bytes_into raised TypeError on it (found by the stop-22 review);
    # the stdlib sends b"".
    a, b = corral.Pipe()
    a.send_bytes(np.zeros((0, 5), np.uint8))
    assert b.recv_bytes() == b""
    a.send_bytes(b"")
    assert b.recv_bytes_into(np.zeros((0, 5), np.uint8)) == 0
