"""Fault backends: how an experiment kills, pauses, stops or cuts off a node (see `base`)."""
