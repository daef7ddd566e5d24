"""broadcast: a realtime event broadcaster (Socket.IO and Server-Sent Events on one broker)."""

__version__ = "0.1.0"
