"""Training: cross-validated candidates, leaderboard, the train service."""
