"""The contract that the API and the worker share.

Settings, request and response schemas, the job store, artifact paths, domain errors and
formula checking (with the families it knows). Nothing here imports PyMC, Bambi or ArviZ:
the API imports this package and must stay light and safe. What only the API runs (request
validation, the reconciler) lives in ``service.api``.
"""
