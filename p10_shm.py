    del pool, p; gc.collect(); time.sleep(1)
    print("after del pool & process: sysShmem", shmem_sys(), "memfd MB", memfd_blocks())
