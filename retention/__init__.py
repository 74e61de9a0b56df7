"""The record of the daily retention run, shared by every worker (see notifications/retention.py
for the policy and the purge)."""
