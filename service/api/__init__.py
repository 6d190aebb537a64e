"""The HTTP API: validates requests, enqueues fits, reads results. Never imports PyMC."""
