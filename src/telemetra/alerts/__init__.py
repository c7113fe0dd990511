"""Alerts: rules (the model), their pure evaluation, and the engine that runs them."""
