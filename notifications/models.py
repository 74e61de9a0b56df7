# The outbox and integrations arrive with later issues.
