"""The chat client: its asyncio driver and the sans-I/O machines below it (the room,
the bootnode link, one machine per remote peer, reliable delivery). It never imports
the bootnode side."""
