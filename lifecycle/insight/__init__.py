"""Insight: the churn model and its evaluation, lifetime value, cohorts and tiers."""
