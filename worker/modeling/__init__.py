"""Modelling functions: build a Bambi model from a spec, sample, summarise, predict."""
