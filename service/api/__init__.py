"""The HTTP API: validates requests (``validation``), enqueues fits, reads results, and
re-queues lost fits (``reconciler``). Never imports PyMC."""
