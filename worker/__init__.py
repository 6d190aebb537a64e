"""The worker: Celery tasks that fit models and answer predictions. Imports PyMC."""
