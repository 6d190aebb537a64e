"""hbm-service: hierarchical Bayesian models as a service."""
