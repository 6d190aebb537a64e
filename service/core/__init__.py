"""The contract that the API and the worker share.

Settings, request and response schemas, the job store, artifact paths, domain errors and
formula checking. Nothing here imports PyMC, Bambi or ArviZ: the API imports this package
and must stay light and safe.
"""
