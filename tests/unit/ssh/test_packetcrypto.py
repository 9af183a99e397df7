"""The padding pool behind every sealed packet (sealing and opening are in test_packet_transport)."""

from __future__ import annotations

import os

from relayd.ssh import packetcrypto


def test_padding_is_never_handed_out_twice_across_refills():
    pool = packetcrypto._PaddingPool()
    taken = [pool.take(255) for _ in range(3 * pool.SIZE // 255)]
    assert all(len(piece) == 255 for piece in taken)
    assert len(set(taken)) == len(taken)


def test_a_forked_child_does_not_reuse_the_parents_padding():
    pool = packetcrypto._PaddingPool()
    pool.take(16)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what it would pad with next
        os.write(write_end, pool.take(64))
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64)
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 64 and child != pool.take(64)
