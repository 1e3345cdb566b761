"""Reports: lifecycle analytics, NPS, the overview and portfolio, search, the account view and its stored card facts,
money in the reporting currency."""
