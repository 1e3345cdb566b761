"""Scoring the portfolio: signals, health, stages (with time in stage), alert rules, revenue movements, the at-risk
definition and the usage roll-ups they read."""
