"""The clients for programs that are not trio: `Client` (threads) and `AsyncioClient`."""
