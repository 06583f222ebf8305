"""What the worker and the API agree on: topics, score events and the Redis layout."""
