"""The bootnode (rendezvous server): its asyncio driver, the sans-I/O rendezvous machine,
the per-packet fast path (Cython) with its pure-Python twin, cookies and metrics.
It never imports the client side."""
