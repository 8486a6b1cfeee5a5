"""The domain: job requests, their validation, state transitions and the queries the API needs."""
