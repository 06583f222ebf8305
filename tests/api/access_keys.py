"""The keys the API's tests run with: one per scope, and the headers that carry them."""

SCORING_KEY = "scoring-key-of-the-tests"
DASHBOARD_KEY = "dashboard-key-of-the-tests"
SCORING = {"X-API-Key": SCORING_KEY}
DASHBOARD = {"X-API-Key": DASHBOARD_KEY}
